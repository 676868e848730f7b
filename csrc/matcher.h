// Matcher: the constrained decoder for one query. It walks the output byte by byte with the
// schema's automaton, adds the token-level rules (canonical tokens inside literal cores, end
// tokens, the token budget) and answers, per step, which tokens may come next.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "automaton.h"
#include "grammar.h"
#include "query.h"

namespace qpfast {

// The token being walked: `nb` bytes consumed so far (so a literal byte at offset p belongs
// to a token that started at p - nb, or before the literal when that is negative);
// `closed`: it already covered a whole canonical core token and may not go on;
// `core_tok`: that token's id.
struct TokCtx {
  int nb = 0;
  bool closed = false;
  int core_tok = -1;
};

class Matcher {
 public:
  // `normalized`: the normalized query (UTF-8, non-empty). max_tokens < 0: no budget; else the
  // most tokens (end token included) the output may take.
  Matcher(std::shared_ptr<const Grammar> grammar, const std::string& normalized, int max_tokens);

  void fill_bitmask(uint32_t* row) const;  // row: vocab.words() int32 words
  bool accept(int token);                   // false (and no change) when not allowed
  void rollback(int n);
  std::vector<int> forced_tokens() const;
  bool is_finished() const { return finished_; }            // end token accepted
  bool is_complete() const { return !finished_ && auto_.finished(st_); }  // JSON done, end token next
  int remaining_min_tokens() const;
  int num_tokens() const { return static_cast<int>(hist_.size()); }
  std::string text() const;  // bytes so far (without a prefix-space vocab's leading space)
  int max_tokens() const { return budget_; }
  int words() const { return g_->vocab().words(); }  // int32 words of its bitmask rows
  const std::string& normalized() const { return query_->text; }

 private:
  struct Counters { uint16_t spos, nseg, nweights, prev_end; };
  bool mstep(GState& st, TokCtx& tc, uint8_t b) const;
  bool end_ok(GState& st, const TokCtx& tc, int token) const;
  bool try_token(GState& st, int token) const;  // full check of one token from st
  int cost(const GState& st) const;
  int group_cost(int g, Counters c, uint8_t alive_mask) const;
  int enter_cost(Node n, Counters c) const;
  bool budget_ok(const GState& after) const;
  void dfs(int node, const GState& st, const TokCtx& tc, uint32_t* row) const;
  void ensure_costs() const;
  void seg_costs(const QueryCtx& q) const;

  std::shared_ptr<const Grammar> g_;
  std::unique_ptr<QueryCtx> query_;
  Automaton auto_;
  GState st_;
  bool finished_ = false;
  int budget_ = -1;
  bool skip_space_;        // prefix-space vocab: the first token's leading space is not text
  std::vector<GState> hist_;      // state before each accepted token
  std::vector<uint32_t> text_len_;  // text_ size before each accepted token
  std::string raw_;  // all accepted bytes (incl. a leading space)
  // Per-query cost tables (built on first use when there is a budget).
  mutable bool costs_ready_ = false;
  mutable std::vector<int> seg_dp_;        // tokens for q'[i:] as the fewest segments
  mutable std::vector<uint16_t> seg_pieces_;  // ... how many (1 unless segments break at spaces)
  mutable int seg_sep_ = 0;                // tokens of the `","` between two segments
  mutable std::vector<int> char_min_;      // min tokens of one non-space char at >= i
  mutable std::vector<uint16_t> next_end_; // bytes from E[j] to the nearest valid entity end
};

// Fills rows[i] for matchers[i]; thread-safe (matchers are only read).
void fill_bitmasks(const std::vector<const Matcher*>& matchers, uint32_t* data, int64_t stride_words, int nthreads);

}  // namespace qpfast
