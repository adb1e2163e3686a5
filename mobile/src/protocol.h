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

struct Request {
  std::string cmd;             // switch | infer | bench | bench_reload | stats | quit
  nlohmann::json id;           // echoed back in the response; null when absent
  std::string variant;         // switch: target; bench, bench_reload: optional, "" = current
  int64_t n = 1;               // infer: number of runs
  std::string input;           // infer: raw float32 input file; "" = generated pattern
  std::string output_path;     // infer: where to write the raw float32 output; "" = nowhere
  int64_t max_output = 16;     // infer: how many output values to put in the response
  int64_t warmup = 5;          // bench
  int64_t runs = 50;           // bench: timed runs; bench_reload: reloads (default 5)
};

// Longest request line accepted; longer lines are answered with an error and skipped.
constexpr size_t kMaxLineBytes = 1 << 20;

// Parses one request line (without its newline). Throws ProtocolError naming what is wrong.
Request parse_request(const std::string& line);

}  // namespace shifter
