// Splitting independent rows across threads (the batched mask fills).
#pragma once
#include <algorithm>
#include <thread>
#include <vector>

namespace qpfast {

// Calls work(lo, hi) over [0, n) in contiguous ranges, on up to `nthreads` threads (inline
// when nthreads <= 1 or n < 4: starting a thread costs more than a few rows).
template <class Work>
void for_row_ranges(int n, int nthreads, Work&& work) {
  if (nthreads <= 1 || n < 4) {
    work(0, n);
    return;
  }
  nthreads = std::min(nthreads, n);
  std::vector<std::thread> threads;
  int per = (n + nthreads - 1) / nthreads;
  for (int t = 0; t < nthreads; ++t) {
    int lo = t * per, hi = std::min(n, lo + per);
    if (lo < hi) threads.emplace_back(work, lo, hi);
  }
  for (auto& th : threads) th.join();
}

}  // namespace qpfast
