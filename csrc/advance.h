// The engine's per-step host work for a batch of rows in one call: after a row's pick, the
// tokens the matcher forces (jump-forward), its next bitmask, and while that bitmask allows
// a single token, that token and the ones it forces in turn. One Python call a step instead
// of one (or several) per token.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "matcher.h"

namespace qpfast {

struct AdvanceRow {
  Matcher* matcher;  // distinct per row
  int64_t pick;      // token to accept first, or -1 for none
  int64_t slot;      // bitmask row to fill
};

// What happened to one row besides the tokens it accepted: `rejected` = the token the
// matcher refused (the row stops there; -1 when none); `filled`: its bitmask row holds its
// next mask (it did not finish or fail).
struct AdvanceResult {
  int64_t rejected = -1;
  bool filled = false;
};

// For each row: accepts its pick, then (jump_forward) the forced tokens; unless it finished
// (or !fill: the caller fills the masks later, and the rest is skipped), fills
// data[slot * stride_words ...] with its next mask; then (jump_forward) while that mask
// allows exactly one token, accepts it and the tokens forced after it and fills the mask
// again. Rows are independent (distinct matchers and slots; the caller checks), so
// `nthreads` threads may split them. `tokens[i]` receives row i's accepted tokens, its pick
// first when it was given.
void advance_rows(const std::vector<AdvanceRow>& rows, uint32_t* data, int64_t stride_words, int words,
                  bool jump_forward, bool fill, int nthreads, std::vector<AdvanceResult>& results,
                  std::vector<std::vector<int>>& tokens);

}  // namespace qpfast
