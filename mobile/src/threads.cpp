#include "threads.h"

#include <cstddef>

#if __has_include(<executorch/extension/threadpool/threadpool.h>)
#include <executorch/extension/threadpool/threadpool.h>
#else
// The executorch wheel ships libexecutorch_threadpool but not this header (only
// threadpool_guard.h). These are the two members of upstream's
// extension/threadpool/threadpool.h (v1.5.1) that the runner calls, declared verbatim so that
// they link against the wheel's library; a source build (Android) uses the real header above.
namespace executorch::extension::threadpool {
class ThreadPool final {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool
#endif

namespace shifter {

bool set_thread_count(uint32_t threads) {
  auto* pool = executorch::extension::threadpool::get_threadpool();
  return pool != nullptr && pool->_unsafe_reset_threadpool(threads);
}

uint32_t thread_count() {
  auto* pool = executorch::extension::threadpool::get_threadpool();
  return pool == nullptr ? 0 : static_cast<uint32_t>(pool->get_thread_count());
}

}  // namespace shifter
