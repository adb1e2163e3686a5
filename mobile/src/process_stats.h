// Resident memory of this process, for the `stats` command and the bench output.
#pragma once

#include <cstdint>

namespace shifter {

struct MemoryUsage {
  int64_t rss_kb = -1;       // VmRSS: resident now; -1 when the platform does not say
  int64_t peak_rss_kb = -1;  // VmHWM (or getrusage's ru_maxrss): highest resident so far
};

MemoryUsage memory_usage();

}  // namespace shifter
