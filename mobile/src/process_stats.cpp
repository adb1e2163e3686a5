#include "process_stats.h"

#include <sys/resource.h>

#include <fstream>
#include <string>

namespace shifter {

MemoryUsage memory_usage() {
  MemoryUsage usage;
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmRSS:") {
      status >> usage.rss_kb;
    } else if (key == "VmHWM:") {
      status >> usage.peak_rss_kb;
    }
    status.ignore(1 << 12, '\n');
  }
  if (usage.peak_rss_kb < 0) {
    struct rusage self;
    if (getrusage(RUSAGE_SELF, &self) == 0) {
      usage.peak_rss_kb = self.ru_maxrss;  // kilobytes on Linux and Android
    }
  }
  return usage;
}

}  // namespace shifter
