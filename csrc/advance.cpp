#include "advance.h"

#include "parallel.h"

namespace qpfast {

namespace {

// The only token a bitmask row allows, or -1 when it allows none or several.
int single_token(const uint32_t* row, int words) {
  int found = -1;
  for (int w = 0; w < words; ++w) {
    uint32_t x = row[w];
    if (!x) continue;
    if (found >= 0 || (x & (x - 1))) return -1;
    found = 32 * w + __builtin_ctz(x);
  }
  return found;
}

// Accepts t; records it, or the refusal.
bool take(Matcher& m, int t, AdvanceResult& r, std::vector<int>& out) {
  if (!m.accept(t)) {
    r.rejected = t;
    return false;
  }
  out.push_back(t);
  return true;
}

// The forced tokens, until none is forced or the row ends; false when one was refused.
bool take_forced(Matcher& m, AdvanceResult& r, std::vector<int>& out) {
  while (!m.is_finished()) {
    std::vector<int> forced = m.forced_tokens();
    if (forced.empty()) return true;
    for (int t : forced) {
      if (!take(m, t, r, out)) return false;
      if (m.is_finished()) return true;
    }
  }
  return true;
}

void advance_one(const AdvanceRow& row, uint32_t* mask, int words, bool jump_forward, bool fill, AdvanceResult& r,
                 std::vector<int>& out) {
  Matcher& m = *row.matcher;
  if (row.pick >= 0 && !take(m, static_cast<int>(row.pick), r, out)) return;
  if (jump_forward && !take_forced(m, r, out)) return;
  while (fill && !m.is_finished()) {
    m.fill_bitmask(mask);
    r.filled = true;
    if (!jump_forward) return;
    int t = single_token(mask, words);
    if (t < 0) return;
    r.filled = false;
    if (!take(m, t, r, out) || !take_forced(m, r, out)) return;
  }
}

}  // namespace

void advance_rows(const std::vector<AdvanceRow>& rows, uint32_t* data, int64_t stride_words, int words,
                  bool jump_forward, bool fill, int nthreads, std::vector<AdvanceResult>& results,
                  std::vector<std::vector<int>>& tokens) {
  const int n = static_cast<int>(rows.size());
  results.assign(n, AdvanceResult{});
  tokens.assign(n, {});
  for_row_ranges(n, nthreads, [&](int lo, int hi) {
    for (int i = lo; i < hi; ++i)
      advance_one(rows[i], data + rows[i].slot * stride_words, words, jump_forward, fill, results[i], tokens[i]);
  });
}

}  // namespace qpfast
