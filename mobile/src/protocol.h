// The JSON-lines command protocol: parsing one request line into a validated Request.
// mobile/README.md is the reference for every command, field and error.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace shifter {

// A request the runner answers with {"ok":false,...} before doing anything.
class ProtocolError : public std::runtime_error {
 public:
  ProtocolError(nlohmann::json cmd, nlohmann::json id, const std::string& message)
      : std::runtime_error(message), cmd(std::move(cmd)), id(std::move(id)) {}
  nlohmann::json cmd;  // the command name when it was readable, else null
  nlohmann::json id;   // the request's "id" when it was readable, else null
};

// The commands, named in requests as "switch", "infer", "bench", "bench_reload", "stats", "quit".
enum class Command { Switch, Infer, Bench, BenchReload, Stats, Quit };

// A request with every field of its command: those it did not give hold the command's defaults
// (protocol.cpp's command table; mobile/README.md lists them).
struct Request {
  Command command = Command::Stats;
  std::string cmd;             // the command's name, echoed back in the response
  nlohmann::json id;           // echoed back in the response; null when absent
  std::string variant;         // switch: target; bench, bench_reload: optional, "" = current
  int64_t n = 0;               // infer: number of runs
  std::string input;           // infer: raw float32 input file; "" = generated pattern
  std::string output_path;     // infer: where to write the raw float32 output; "" = nowhere
  int64_t max_output = 0;      // infer: how many output values to put in the response
  int64_t warmup = 0;          // bench
  int64_t runs = 0;            // bench: timed runs; bench_reload: reloads
};

// Longest request line accepted; longer lines are answered with an error and skipped.
constexpr size_t kMaxLineBytes = 1 << 20;

// Parses one request line (without its newline). Throws ProtocolError naming what is wrong.
Request parse_request(const std::string& line);

// The request for `command` that names no field but "cmd": every field at its default.
Request default_request(Command command);

}  // namespace shifter
