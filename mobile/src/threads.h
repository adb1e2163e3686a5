// ExecuTorch's shared thread pool, which the XNNPACK delegate and the optimized kernels use.
#pragma once

#include <cstdint>

namespace shifter {

// Resizes the pool; must run before any program is loaded, because the XNNPACK delegate keeps
// the pool it saw at load time. Returns false when the pool could not be resized.
bool set_thread_count(uint32_t threads);

// Threads of the pool (ExecuTorch's default is the number of performance cores).
uint32_t thread_count();

}  // namespace shifter
