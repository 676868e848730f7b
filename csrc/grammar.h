// Grammar: a schema bound to a vocabulary. It holds what depends on both and not on the
// query: the canonical tokens of each literal's context-free core (so literals decode as the
// tokenizer would write them, and can be jumped over), and token-cost tables for budgets.
#pragma once
#include <array>
#include <climits>
#include <memory>
#include <vector>

#include "schema.h"
#include "vocab.h"

namespace qpfast {

constexpr int kInf = INT_MAX / 4;

// The canonical tokens of a literal between byte offsets [cs, ce): inside it, a token must
// start at a cut and be exactly the canonical token there.
struct Core {
  int cs = 0, ce = 0;
  std::vector<int16_t> cut_start;  // per byte offset in [cs, ce): offset of its token's start
  std::vector<int> token_at;       // per byte offset: canonical token starting here, or -1
  bool empty() const { return cs >= ce; }
  bool is_cut(int p) const { return p == ce || (p >= cs && p < ce && token_at[p] >= 0); }
};

struct CoreSpec {  // from Python: canonical spans (start, end, token id) inside the literal
  int group, alt;
  std::vector<std::array<int, 3>> spans;
};

class Grammar {
 public:
  Grammar(std::shared_ptr<const Vocab> vocab, const CompiledSchema& schema, const std::vector<CoreSpec>& cores);
  const Vocab& vocab() const { return *vocab_; }
  const CompiledSchema& schema() const { return schema_; }
  const Core& core(int g, int a) const { return cores_[g][a]; }
  // Min tokens to write literal (g, a) from byte p to its end (respecting its core).
  int glue_cost(int g, int a, int p) const { return glue_dp_[g][a][p]; }
  int type_cost(int node) const { return type_cost_[node]; }
  int cat_cost(int node) const { return cat_cost_[node]; }
  // Min tokens for k more weights when the next byte is a digit / a comma.
  int weights_from_digit(int k) const;
  int weights_from_comma(int k) const;
  // Indices into vocab().quote_groups() of the tails that can occur inside this schema's
  // intent (walked once here with the byte automaton; the rest can never be valid there).
  const std::vector<int>& intent_quote_groups() const { return intent_groups_; }
  // Min tokens to write bytes s[from:to) exactly (any tokens), kInf if impossible.
  int bytes_cost(const std::string& s, size_t from, size_t to) const;
  // Fills dp[i] = min tokens for s[i:] (size s.size()+1).
  void suffix_costs(const std::string& s, std::vector<int>& dp) const;
  // min over tokens t matching s at i and ending by `limit` of 1 + dp[i + len(t)].
  int best_step(const std::string& s, size_t i, size_t limit, const std::vector<int>& dp) const;

 private:
  std::shared_ptr<const Vocab> vocab_;
  CompiledSchema schema_;  // with a leading space on the first literal for prefix-space vocabs
  std::array<std::vector<Core>, G_COUNT> cores_;
  std::array<std::vector<std::vector<int>>, G_COUNT> glue_dp_;
  std::vector<int> type_cost_, cat_cost_, wdp_;
  std::vector<int> intent_groups_;

  std::string wstr_;
};

}  // namespace qpfast
