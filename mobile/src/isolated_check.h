// Trial-loads one variant in a child process before the runner loads it itself.
//
// ExecuTorch trusts a program that passed flatbuffer verification: a .pte whose bytes are corrupt
// but whose manifest entry matches them (re-hashed after the damage, or checked with --verify
// size|none) can abort or crash the process inside the runtime. The child is this executable in
// one-shot bench mode for that single variant, so such a crash costs the child, not the server.
//
// The child is started the way this process was: directly (/proc/self/exe), or through the dynamic
// loader it was started with (the arm64 bundle runs `ld-linux-aarch64.so.1 --library-path lib
// shifter_runner ...`, where /proc/self/exe is the loader), with the loader's arguments again.
#pragma once

#include <cstdint>
#include <string>

namespace shifter {

struct IsolatedCheck {
  enum class Outcome { Passed, Failed, Crashed, Unavailable } outcome;
  std::string detail;  // the signal for Crashed, the reason for Unavailable
};

// Call first thing in main(): how many arguments this program itself was given, which tells the
// loader's arguments apart from its own in /proc/self/cmdline.
void remember_argument_count(int argc);

IsolatedCheck check_in_subprocess(const std::string& portfolio_dir, const std::string& precision,
                                  const std::string& variant, uint32_t threads);

}  // namespace shifter
