#include "manifest.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sha256.h"

namespace shifter {
namespace {

using nlohmann::json;

constexpr int kSchemaVersion = 2;  // version 1 has the same fields this runner reads: both are read
constexpr off_t kMaxManifestBytes = off_t(64) << 20;
constexpr int64_t kMaxInputElements = int64_t(1) << 26;

// The whole of a manifest that must be a regular file of bounded size. Opening never blocks: a
// FIFO is refused rather than waited on, a directory is refused rather than read.
std::string read_manifest_file(const std::string& path, const std::string& dir) {
  const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      throw ManifestError("no manifest.json in '" + dir +
                          "'; pass the directory written by the portfolio export");
    }
    throw ManifestError("cannot open '" + path + "': " + std::strerror(errno));
  }
  struct stat info;
  std::string text;
  std::string problem;
  if (fstat(fd, &info) != 0) {
    problem = std::string("cannot stat it: ") + std::strerror(errno);
  } else if (!S_ISREG(info.st_mode)) {
    problem = "is not a regular file";
  } else if (info.st_size > kMaxManifestBytes) {
    problem = "is larger than " + std::to_string(kMaxManifestBytes) + " bytes";
  } else {
    text.resize(size_t(info.st_size));
    size_t done = 0;
    while (done < text.size()) {
      const ssize_t got = read(fd, text.data() + done, text.size() - done);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        problem = got < 0 ? std::string("cannot be read: ") + std::strerror(errno) : "shrank while being read";
        break;
      }
      done += size_t(got);
    }
  }
  close(fd);
  if (!problem.empty()) {
    throw ManifestError("'" + path + "' " + problem + "; pass the directory written by the portfolio export");
  }
  return text;
}

std::string real_path(const std::string& path) {
  char resolved[PATH_MAX];
  if (realpath(path.c_str(), resolved) == nullptr) {
    return "";
  }
  return resolved;
}

// Returns an empty string when `relative` is a safe relative POSIX path, else the reason.
std::string check_relative_path(const std::string& relative) {
  if (relative.empty()) {
    return "is empty";
  }
  if (relative.front() == '/') {
    return "is absolute; paths in the manifest must be relative to the portfolio directory";
  }
  if (relative.find('\\') != std::string::npos || relative.find('\0') != std::string::npos) {
    return "contains a backslash or NUL; use POSIX separators";
  }
  std::stringstream parts(relative);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part == "..") {
      return "contains '..' and would leave the portfolio directory";
    }
  }
  return "";
}

bool is_sha256_hex(const std::string& text) {
  if (text.size() != 64) {
    return false;
  }
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

VariantFile read_variant(const json& entry, size_t index, const std::string& root,
                         const std::string& precision) {
  VariantFile variant;
  variant.name = "#" + std::to_string(index);
  if (!entry.is_object()) {
    variant.error = "variants[" + std::to_string(index) + "] is not an object";
    return variant;
  }
  auto name = entry.find("name");
  if (name == entry.end() || !name->is_string() || !is_valid_variant_name(name->get<std::string>())) {
    variant.error = "variants[" + std::to_string(index) +
                    "].name is missing or not of the form [A-Za-z0-9][A-Za-z0-9._-]{0,63}";
    return variant;
  }
  variant.name = name->get<std::string>();
  auto files = entry.find("files");
  if (files == entry.end() || !files->is_object() || !files->contains(precision)) {
    variant.error = "variant '" + variant.name + "' has no '" + precision +
                    "' file in the manifest; export it or run with another --precision";
    return variant;
  }
  const json& file = (*files)[precision];
  if (!file.is_object() || !file.contains("path") || !file["path"].is_string() ||
      !file.contains("bytes") || !file["bytes"].is_number_unsigned() ||
      !file.contains("sha256") || !file["sha256"].is_string()) {
    variant.error = "variant '" + variant.name + "': files." + precision +
                    " needs a string 'path', a non-negative integer 'bytes' and a string 'sha256'";
    return variant;
  }
  const std::string relative = file["path"].get<std::string>();
  const std::string path_problem = check_relative_path(relative);
  if (!path_problem.empty()) {
    variant.error = "variant '" + variant.name + "': path '" + relative + "' " + path_problem;
    return variant;
  }
  variant.bytes = file["bytes"].get<uint64_t>();
  variant.sha256 = file["sha256"].get<std::string>();
  if (!is_sha256_hex(variant.sha256)) {
    variant.error = "variant '" + variant.name + "': sha256 must be 64 lowercase hex digits";
    return variant;
  }
  const std::string resolved = real_path(root + "/" + relative);
  if (resolved.empty()) {
    variant.error = "variant '" + variant.name + "': file '" + relative +
                    "' is missing; re-export the portfolio or copy the file again";
    return variant;
  }
  // A symlink can point outside even when the text of the path does not.
  if (resolved.compare(0, root.size() + 1, root + "/") != 0) {
    variant.error = "variant '" + variant.name + "': path '" + relative +
                    "' resolves outside the portfolio directory";
    return variant;
  }
  variant.path = resolved;
  return variant;
}

}  // namespace

bool is_valid_variant_name(const std::string& name) {
  if (name.empty() || name.size() > 64) {
    return false;
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) {
      return false;
    }
  }
  return true;
}

Manifest read_manifest(const std::string& dir, const std::string& precision) {
  const std::string root = real_path(dir);
  if (root.empty()) {
    throw ManifestError("portfolio directory '" + dir + "' does not exist");
  }
  const std::string manifest_path = root + "/manifest.json";
  json document;
  try {
    document = json::parse(read_manifest_file(manifest_path, dir));
  } catch (const json::exception& e) {
    throw ManifestError("'" + manifest_path + "' is not valid JSON (" + e.what() +
                        "); the file is corrupt: re-export the portfolio");
  }
  if (!document.is_object()) {
    throw ManifestError("'" + manifest_path + "' is JSON but not an object (it is " +
                        document.type_name() + "); re-export the portfolio");
  }
  if (!document.contains("schema_version") ||
      (document["schema_version"] != 1 && document["schema_version"] != kSchemaVersion)) {
    throw ManifestError("'" + manifest_path + "' has schema_version " +
                        (document.contains("schema_version") ? document["schema_version"].dump()
                                                             : std::string("(missing)")) +
                        " but this runner reads only schema_version 1 or 2; rebuild the runner or "
                        "re-export the portfolio with a matching lightning-shifter");
  }
  Manifest manifest;
  const json& input = document.value("input", json());
  if (!input.is_object() || !input.contains("shape") || !input["shape"].is_array() ||
      input["shape"].empty() || input["shape"].size() > 8) {
    throw ManifestError("'" + manifest_path + "': input.shape must be a list of 1 to 8 dimensions");
  }
  int64_t numel = 1;
  for (const json& dim : input["shape"]) {
    if (!dim.is_number_integer() || dim.get<int64_t>() < 1 || dim.get<int64_t>() > (1 << 24)) {
      throw ManifestError("'" + manifest_path + "': input.shape holds " + dim.dump() +
                          "; every dimension must be an integer from 1 to 16777216");
    }
    numel *= dim.get<int64_t>();
    if (numel > kMaxInputElements) {
      throw ManifestError("'" + manifest_path + "': input.shape has more than 2^26 elements");
    }
    manifest.input_shape.push_back(static_cast<int32_t>(dim.get<int64_t>()));
  }
  manifest.input_dtype = input.value("dtype", std::string());
  if (manifest.input_dtype != "float32") {
    throw ManifestError("'" + manifest_path + "': input.dtype is '" + manifest.input_dtype +
                        "'; this runner feeds float32 inputs only");
  }
  const json& variants = document.value("variants", json());
  if (!variants.is_array() || variants.empty()) {
    throw ManifestError("'" + manifest_path + "' lists no variants");
  }
  std::set<std::string> seen;
  for (size_t i = 0; i < variants.size(); ++i) {
    VariantFile variant = read_variant(variants[i], i, root, precision);
    if (variant.error.empty() && !seen.insert(variant.name).second) {
      variant.error = "variant name '" + variant.name + "' appears twice in the manifest";
    }
    manifest.variants.push_back(std::move(variant));
  }
  return manifest;
}

void verify_variant_file(VariantFile& variant, Verify level) {
  if (!variant.error.empty()) {
    return;
  }
  // Even unverified, a program must be a regular file: loading a FIFO would block for ever.
  struct stat info;
  if (stat(variant.path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
    variant.error = "variant '" + variant.name + "': '" + variant.path + "' is not a regular file";
    return;
  }
  if (level == Verify::None) {
    return;
  }
  if (uint64_t(info.st_size) != variant.bytes) {
    variant.error = "variant '" + variant.name + "': '" + variant.path + "' has " +
                    std::to_string(info.st_size) + " bytes but the manifest says " +
                    std::to_string(variant.bytes) + "; the file is truncated or replaced, copy it again";
    return;
  }
  if (level == Verify::Sha256) {
    std::string digest;
    try {
      digest = sha256_file(variant.path);
    } catch (const std::exception& e) {
      variant.error = "variant '" + variant.name + "': " + e.what();
      return;
    }
    if (digest != variant.sha256) {
      variant.error = "variant '" + variant.name + "': sha256 of '" + variant.path + "' is " + digest +
                      " but the manifest says " + variant.sha256 +
                      "; the file is corrupt or replaced, copy it again";
    }
  }
}

}  // namespace shifter
