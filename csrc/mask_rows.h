// Summaries of filled token bitmask rows (bit j of word w set = token 32*w + j allowed), for
// the engine's per-step decisions: which rows allow a single token (jump-forward), which few
// enough to score only those (sparse logits), which need the full vocabulary.
#pragma once
#include <cstdint>

namespace qpfast {

// For each of `rows` rows (`words` words each, row r at data + r * stride_words):
// counts[r] = how many tokens the row allows, or k + 1 when it allows more than k (the scan
// stops there); ids[r * k .. r * k + k) = the allowed ids in ascending order when
// counts[r] <= k, padded with -1 (all -1 otherwise).
void mask_rows(const uint32_t* data, int64_t rows, int64_t stride_words, int words, int k, int64_t* counts,
               int64_t* ids);

}  // namespace qpfast
