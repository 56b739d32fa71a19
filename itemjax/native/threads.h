// Thread-count helpers shared by the native libraries (csr_spmm.cc, ppr_push.cc); header-only, so each
// shared object compiles its own copy and neither library depends on the other at load time.
//
//   AvailableCpus(): the CPUs this process may run on (its affinity mask on Linux, else
//                    std::thread::hardware_concurrency(), at least 1).
//   EnvThreads():    ITEMJAX_NATIVE_THREADS when it is a positive integer, else 0 (unset or invalid:
//                    ignored, the caller decides automatically).
//   kMaxThreads:     the most threads either library starts.

#ifndef ITEMJAX_NATIVE_THREADS_H_
#define ITEMJAX_NATIVE_THREADS_H_

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#endif

namespace itemjax_native {

constexpr int64_t kMaxThreads = 256;

inline int64_t AvailableCpus() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int count = CPU_COUNT(&set);
    if (count > 0) return count;
  }
#endif
  const unsigned count = std::thread::hardware_concurrency();
  return count > 0 ? static_cast<int64_t>(count) : 1;
}

inline int64_t EnvThreads() {
  const char* text = std::getenv("ITEMJAX_NATIVE_THREADS");
  if (text == nullptr || *text == '\0') return 0;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value <= 0) return 0;  // not a positive integer: ignored
  return static_cast<int64_t>(value);
}

}  // namespace itemjax_native

#endif  // ITEMJAX_NATIVE_THREADS_H_
