#include "kernels.h"

#include <sched.h>

namespace {
// Not OMP_NUM_THREADS: MindSpore sets that to 1 in its process when it is
// unset, for its own kernels.
std::atomic<int> threads{0};
}  // namespace

int thread_count() {
  int n = threads.load();
  cpu_set_t cpus;
  if (n <= 0 && sched_getaffinity(0, sizeof(cpus), &cpus) == 0) n = CPU_COUNT(&cpus);
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  return n > 0 ? n : 1;
}

// threads for the kernels; 0 for every CPU the process may run on
extern "C" void SetThreads(int n) { threads = n; }
