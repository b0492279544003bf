// What the kernels share: their threads (std::threads taking the next item
// from a shared counter, threads.cc) and the check of their arguments.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

// 0 (the default, or SetThreads(0)): every CPU this process may run on
int thread_count();

struct NoState {};

// run fn(item, state) for item in [0, items) on the threads (at most
// max_threads, 0 for no bound; 1 runs on the caller's thread alone), each with
// a State of its own (scratch buffers, allocated once per call rather than per
// item), each taking the next item when done with one: MindSpore's own threads
// share the cores (its launching thread used about half a core throughout a
// mid training step), and a fixed share would wait for the most delayed thread
template <typename State, typename Fn>
void parallel_for(int64_t items, Fn fn, int max_threads = 0) {
  const int bound = max_threads > 0 ? std::min(max_threads, thread_count()) : thread_count();
  const int n = static_cast<int>(std::min<int64_t>(bound, items));
  std::atomic<int64_t> next{0};
  auto work = [&] {
    State state;
    for (int64_t i = next++; i < items; i = next++) fn(i, state);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (auto &th : pool) th.join();
}

// MindSpore passes an aot kernel its inputs' and outputs' dtypes by name
inline bool all_float32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}
