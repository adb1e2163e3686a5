// Reads a portfolio's manifest.json (schema_version 1 or 2, see mobile/README.md) and checks the
// program files it lists, without loading them.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace shifter {

// A problem with the portfolio as a whole: the runner cannot start.
class ManifestError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct VariantFile {
  std::string name;
  std::string path;  // absolute; empty when the manifest entry was rejected
  uint64_t bytes = 0;
  std::string sha256;
  std::string error;  // why this variant cannot be used; empty when it can
};

struct Manifest {
  std::vector<int32_t> input_shape;
  std::string input_dtype;
  std::vector<VariantFile> variants;  // in manifest order, rejected ones included
};

enum class Verify { Sha256, Size, None };

// Parses `<dir>/manifest.json` and picks each variant's file for `precision` ("fp32" or "int8").
// Throws ManifestError for a manifest that cannot be used at all; problems of one variant are
// recorded in its `error` so that the others can still be served.
Manifest read_manifest(const std::string& dir, const std::string& precision);

// Checks that the file is a regular file (at every level) with the listed size (Size, Sha256) and
// digest (Sha256). Sets `variant.error` on a mismatch.
void verify_variant_file(VariantFile& variant, Verify level);

// True for names matching [A-Za-z0-9][A-Za-z0-9._-]{0,63}.
bool is_valid_variant_name(const std::string& name);

}  // namespace shifter
