#include "walk.h"

#include <random>

#include "matcher.h"

namespace qpfast {

namespace {

// The index of the n-th set bit of `row` (n < popcount), or -1.
int nth_bit(const uint32_t* row, int words, long n) {
  for (int w = 0; w < words; ++w) {
    int c = __builtin_popcount(row[w]);
    if (n < c) {
      uint32_t bits = row[w];
      for (long k = 0; k < n; ++k) bits &= bits - 1;
      return w * 32 + __builtin_ctz(bits);
    }
    n -= c;
  }
  return -1;
}

WalkResult walk_one(const std::shared_ptr<const Grammar>& grammar, const std::string& normalized, int max_tokens,
                    std::mt19937_64& rng, double bias_end, const std::vector<uint32_t>& closing_mask) {
  WalkResult res;
  const Vocab& v = grammar->vocab();
  const int W = v.words();
  Matcher m(grammar, normalized, max_tokens);
  std::vector<uint32_t> row(W), both(W);
  const int limit = max_tokens > 0 ? max_tokens + 1 : 4096;
  for (int step = 0; step < limit && !m.is_finished(); ++step) {
    m.fill_bitmask(row.data());
    long count = 0, ccount = 0;
    for (int w = 0; w < W; ++w) {
      count += __builtin_popcount(row[w]);
      both[w] = row[w] & closing_mask[w];
      ccount += __builtin_popcount(both[w]);
    }
    if (count == 0) { res.error = "dead end: empty mask after " + std::to_string(m.num_tokens()) + " tokens"; break; }
    // Ids past the tokenizer must never be allowed.
    for (int id = v.num_tokens(); id < W * 32; ++id)
      if ((row[id >> 5] >> (id & 31)) & 1) { res.error = "mask allows an id past the tokenizer"; return res; }
    std::vector<int> forced = m.forced_tokens();
    if (!forced.empty()) {
      if (count != 1 || !((row[forced[0] >> 5] >> (forced[0] & 31)) & 1)) {
        res.error = "forced token is not the only allowed token";
        break;
      }
      ++res.forced;
    }
    // A token outside the mask must be refused, and leave the matcher unchanged.
    for (int k = 0; k < 2; ++k) {
      int probe = static_cast<int>(rng() % static_cast<uint64_t>(v.num_tokens()));
      if ((row[probe >> 5] >> (probe & 31)) & 1) continue;
      std::string before = m.text();
      if (m.accept(probe)) { res.error = "accept() took a token outside the mask: " + std::to_string(probe); break; }
      if (m.text() != before) { res.error = "a refused token changed the matcher"; break; }
    }
    if (!res.error.empty()) break;
    bool closing = ccount > 0 && std::uniform_real_distribution<double>(0, 1)(rng) < bias_end;
    int pick = closing ? nth_bit(both.data(), W, static_cast<long>(rng() % ccount))
                       : nth_bit(row.data(), W, static_cast<long>(rng() % count));
    if (!m.accept(pick)) { res.error = "accept() refused a token of the mask: " + std::to_string(pick); break; }
    if ((step & 1) && !m.is_finished()) {  // rollback must restore the state exactly
      std::string before = m.text();
      m.rollback(1);
      if (!m.accept(pick) || m.text() != before) { res.error = "rollback(1) + accept did not restore the state"; break; }
    }
  }
  if (res.error.empty() && !m.is_finished()) res.error = "did not finish";
  if (res.error.empty() && max_tokens > 0 && m.num_tokens() > max_tokens) res.error = "exceeded the budget";
  res.text = m.text();
  res.tokens = m.num_tokens();
  return res;
}

}  // namespace

std::vector<WalkResult> random_walks(std::shared_ptr<const Grammar> grammar, const std::vector<std::string>& normalized,
                                     const std::vector<int>& max_tokens, uint64_t seed, double bias_end) {
  const Vocab& v = grammar->vocab();
  std::vector<uint32_t> closing(v.words(), 0);
  for (int id = 0; id < v.num_tokens(); ++id)
    if (!v.special(id) && v.bytes(id).find_first_of("\"]}") != std::string::npos) closing[id >> 5] |= 1u << (id & 31);
  std::mt19937_64 rng(seed);
  std::vector<WalkResult> out;
  out.reserve(normalized.size());
  for (size_t i = 0; i < normalized.size(); ++i) {
    int budget = i < max_tokens.size() ? max_tokens[i] : -1;
    try {
      out.push_back(walk_one(grammar, normalized[i], budget, rng, bias_end, closing));
    } catch (const std::exception& e) {
      WalkResult r;
      r.error = std::string("setup: ") + e.what();
      out.push_back(r);
    }
  }
  return out;
}

}  // namespace qpfast
