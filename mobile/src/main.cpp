// shifter_runner: loads every variant of a lightning-shifter portfolio once and serves JSON-lines
// requests on stdin/stdout (see mobile/README.md for the protocol).
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "isolated_check.h"
#include "manifest.h"
#include "protocol.h"
#include "runner.h"
#include "sha256.h"
#include "threads.h"

namespace {

using nlohmann::json;
using namespace shifter;

constexpr int kExitFatal = 2;

const char* kUsage =
    "usage: shifter_runner --portfolio DIR [--precision fp32|int8] [--variants a,b,...]\n"
    "                      [--threads N] [--verify sha256|size|none] [--isolate on|off]\n"
    "                      [--bench [--warmup N] [--runs N]]\n"
    "       shifter_runner --sha256 FILE...\n"
    "       shifter_runner --help | --version\n"
    "Serves JSON lines on stdin/stdout; see mobile/README.md.\n";

void emit(const json& message) {
  const std::string line = message.dump(-1, ' ', false, json::error_handler_t::replace);
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

[[noreturn]] void fatal(const std::string& error) {
  emit({{"event", "fatal"}, {"error", error}});
  std::exit(kExitFatal);
}

struct Options {
  std::string portfolio;
  RunnerOptions runner;  // runner.threads: 0 = ExecuTorch's default
  bool bench = false;
  int64_t warmup = 5;
  int64_t runs = 50;
  std::vector<std::string> sha256_files;
};

int64_t parse_count(const std::string& flag, const char* text, int64_t min, int64_t max) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < min || value > max) {
    fatal(flag + " takes an integer from " + std::to_string(min) + " to " + std::to_string(max) +
          ", got '" + text + "'");
  }
  return value;
}

Options parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) fatal(flag + " needs a value\n" + kUsage);
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (flag == "--version") {
      emit({{"runner", "shifter_runner " SHIFTER_RUNNER_VERSION},
            {"executorch", SHIFTER_EXECUTORCH_VERSION}});
      std::exit(0);
    } else if (flag == "--portfolio") {
      options.portfolio = value();
    } else if (flag == "--precision") {
      options.runner.precision = value();
      if (options.runner.precision != "fp32" && options.runner.precision != "int8") {
        fatal("--precision must be fp32 or int8, got '" + options.runner.precision + "'");
      }
    } else if (flag == "--variants") {
      const std::string list = value();
      size_t start = 0;
      while (start <= list.size()) {
        const size_t comma = std::min(list.find(',', start), list.size());
        const std::string name = list.substr(start, comma - start);
        if (!is_valid_variant_name(name)) {
          fatal("--variants holds '" + name + "', which is not a variant name");
        }
        options.runner.only_variants.push_back(name);
        start = comma + 1;
      }
    } else if (flag == "--threads") {
      options.runner.threads = uint32_t(parse_count(flag, value(), 1, 1024));
    } else if (flag == "--verify") {
      const std::string level = value();
      if (level == "sha256") options.runner.verify = Verify::Sha256;
      else if (level == "size") options.runner.verify = Verify::Size;
      else if (level == "none") options.runner.verify = Verify::None;
      else fatal("--verify must be sha256, size or none, got '" + level + "'");
    } else if (flag == "--isolate") {
      const std::string mode = value();
      if (mode != "on" && mode != "off") fatal("--isolate must be on or off, got '" + mode + "'");
      options.runner.isolate = mode == "on";
    } else if (flag == "--bench") {
      options.bench = true;
    } else if (flag == "--warmup") {
      options.warmup = parse_count(flag, value(), 0, 100000);
    } else if (flag == "--runs") {
      options.runs = parse_count(flag, value(), 1, 100000);
    } else if (flag == "--sha256") {
      for (++i; i < argc; ++i) options.sha256_files.push_back(argv[i]);
      if (options.sha256_files.empty()) fatal("--sha256 needs at least one file");
    } else {
      fatal("unknown argument '" + flag + "'\n" + kUsage);
    }
  }
  if (options.sha256_files.empty() && options.portfolio.empty()) {
    fatal(std::string("--portfolio DIR is required\n") + kUsage);
  }
  return options;
}

// Reads one line of at most kMaxLineBytes, not counting a trailing '\r' (the rest of a longer
// line is discarded and `too_long` set; `has_nul` is set when it holds a NUL byte). Returns false
// at end of input.
bool read_line(std::FILE* in, std::string& line, bool& too_long, bool& has_nul) {
  line.clear();
  too_long = has_nul = false;
  bool any = false;
  for (int c; (c = std::getc(in)) != EOF;) {
    any = true;
    if (c == '\n') break;
    has_nul = has_nul || c == '\0';
    if (line.size() <= kMaxLineBytes) line.push_back(char(c));  // one more byte: it may be the '\r'
    else too_long = true;
  }
  if (!too_long && !line.empty() && line.back() == '\r') line.pop_back();
  too_long = too_long || line.size() > kMaxLineBytes;
  return any;
}

json error_line(const json& cmd, const json& id, const std::string& error) {
  json response = {{"ok", false}, {"cmd", cmd}, {"error", error}};
  if (!id.is_null()) response["id"] = id;
  return response;
}

json success_line(const Request& request, json fields) {
  fields["ok"] = true;
  fields["cmd"] = request.cmd;
  if (!request.id.is_null()) fields["id"] = request.id;
  return fields;
}

int serve(Runner& runner) {
  std::string line;
  bool too_long, has_nul;
  while (read_line(stdin, line, too_long, has_nul)) {
    if (too_long) {
      emit(error_line(nullptr, nullptr,
                      "request line longer than " + std::to_string(kMaxLineBytes) +
                          " bytes; send one short JSON object per line"));
      continue;
    }
    if (has_nul) {  // JSON text never holds a raw NUL: whatever follows it is not part of a request
      emit(error_line(nullptr, nullptr,
                      "request line holds a NUL byte; send one JSON object per line, e.g. "
                      "{\"cmd\":\"stats\"}"));
      continue;
    }
    Request request;
    try {
      request = parse_request(line);
    } catch (const ProtocolError& e) {
      emit(error_line(e.cmd, e.id, e.what()));
      continue;
    }
    try {
      emit(success_line(request, runner.handle(request)));
    } catch (const CommandError& e) {
      emit(error_line(request.cmd, request.id, e.what()));
    } catch (const std::exception& e) {
      emit(error_line(request.cmd, request.id, std::string("internal error: ") + e.what()));
    }
    if (request.command == Command::Quit) {
      return 0;
    }
  }
  return 0;
}

int bench_once(Runner& runner, const Options& options) {
  for (const auto& variant : runner.variants()) {
    Request request = default_request(Command::Bench);
    request.variant = variant->name;
    request.warmup = options.warmup;
    request.runs = options.runs;
    try {
      emit(success_line(request, runner.handle(request)));
    } catch (const std::exception& e) {
      emit(error_line(request.cmd, nullptr, e.what()));
      return 1;
    }
  }
  const Request stats = default_request(Command::Stats);
  emit(success_line(stats, runner.handle(stats)));
  return runner.failures().empty() && !runner.empty() ? 0 : 1;
}

int run_main(int argc, char** argv) {
  const auto start = std::chrono::steady_clock::now();
  remember_argument_count(argc);
  const Options options = parse_options(argc, argv);
  if (!options.sha256_files.empty()) {
    for (const std::string& path : options.sha256_files) {
      try {
        emit({{"path", path}, {"sha256", sha256_file(path)}});
      } catch (const std::exception& e) {
        fatal(e.what());
      }
    }
    return 0;
  }
  if (options.runner.threads > 0 && !set_thread_count(options.runner.threads)) {
    fatal("could not resize ExecuTorch's thread pool to " + std::to_string(options.runner.threads));
  }
  Manifest manifest;
  try {
    manifest = read_manifest(options.portfolio, options.runner.precision);
  } catch (const ManifestError& e) {
    fatal(e.what());
  }
  for (const std::string& wanted : options.runner.only_variants) {
    bool known = false;
    std::string names;
    for (const auto& variant : manifest.variants) {
      known = known || variant.name == wanted;
      names += (names.empty() ? "" : ", ") + variant.name;
    }
    if (!known) fatal("--variants names '" + wanted + "', which the manifest does not list; it lists: " + names);
  }
  const std::unique_ptr<Runner> runner = Runner::load(options.portfolio, std::move(manifest), options.runner);
  const double startup_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  emit(runner->ready_event(startup_ms));
  return options.bench ? bench_once(*runner, options) : serve(*runner);
}

}  // namespace

int main(int argc, char** argv) {
  // Anything not handled where it happens (a bad_alloc, an I/O exception) still ends with the
  // promised fatal line and exit code instead of std::terminate.
  try {
    return run_main(argc, argv);
  } catch (const std::exception& e) {
    fatal(std::string("internal error: ") + e.what());
  }
}
