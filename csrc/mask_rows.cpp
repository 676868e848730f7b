#include "mask_rows.h"

namespace qpfast {

namespace {

constexpr int kBlock = 16;  // words tested for zero at once (the OR vectorizes)

// Adds the allowed ids of word `w` (bits `x`) to out[n..]; returns the new count, or k + 1
// once the row allows more than k.
inline int64_t add_word(uint32_t x, int w, int k, int64_t n, int64_t* out) {
  n += __builtin_popcount(x);
  if (n > k) return k + 1;
  for (int64_t i = n - __builtin_popcount(x); x; x &= x - 1) out[i++] = static_cast<int64_t>(w) * 32 + __builtin_ctz(x);
  return n;
}

}  // namespace

void mask_rows(const uint32_t* data, int64_t rows, int64_t stride_words, int words, int k, int64_t* counts,
               int64_t* ids) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* row = data + r * stride_words;
    int64_t* out = ids + r * k;
    int64_t n = 0;
    int w = 0;
    for (; w + kBlock <= words && n <= k; w += kBlock) {
      uint32_t any = 0;
      for (int j = 0; j < kBlock; ++j) any |= row[w + j];
      if (!any) continue;  // most words of a constrained mask are zero
      for (int j = 0; j < kBlock && n <= k; ++j)
        if (row[w + j]) n = add_word(row[w + j], w + j, k, n, out);
    }
    for (; w < words && n <= k; ++w)
      if (row[w]) n = add_word(row[w], w, k, n, out);
    counts[r] = n;
    for (int64_t i = (n <= k ? n : 0); i < k; ++i) out[i] = -1;
  }
}

}  // namespace qpfast
