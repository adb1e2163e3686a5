// Trial-loads one variant in a child process before the runner loads it itself.
//
// ExecuTorch trusts a program that passed flatbuffer verification: a .pte whose bytes are corrupt
// but whose manifest entry matches them (re-hashed after the damage, or checked with --verify
// size|none) can abort or crash the process inside the runtime. The child is this executable in
// one-shot bench mode for that single variant, so such a crash costs the child, not the server.
#pragma once

#include <cstdint>
#include <string>

namespace shifter {

struct IsolatedCheck {
  enum class Outcome { Passed, Failed, Crashed, Unavailable } outcome;
  std::string detail;  // the signal for Crashed, the reason for Unavailable
};

IsolatedCheck check_in_subprocess(const std::string& portfolio_dir, const std::string& precision,
                                  const std::string& variant, uint32_t threads);

}  // namespace shifter
