#include "grammar.h"

#include <algorithm>
#include <stdexcept>

#include "automaton.h"
#include "query.h"

namespace qpfast {

int Grammar::best_step(const std::string& s, size_t i, size_t limit, const std::vector<int>& dp) const {
  int node = 0, best = kInf;
  for (size_t j = i; j < limit; ++j) {
    node = vocab_->trie().child(node, static_cast<uint8_t>(s[j]));
    if (node < 0) break;
    int nt;
    vocab_->trie().tokens_at(node, nt);
    if (nt && dp[j + 1] < kInf) best = std::min(best, 1 + dp[j + 1]);
  }
  return best;
}

void Grammar::suffix_costs(const std::string& s, std::vector<int>& dp) const {
  const size_t n = s.size();
  dp.assign(n + 1, kInf);
  dp[n] = 0;
  for (size_t i = n; i-- > 0;) dp[i] = best_step(s, i, n, dp);
}

int Grammar::bytes_cost(const std::string& s, size_t from, size_t to) const {
  std::vector<int> dp;
  suffix_costs(s.substr(from, to - from), dp);
  return dp[0];
}

namespace {
void label_costs(const Grammar& g, const LabelTrie& trie, std::vector<int>& out) {
  out.assign(trie.size(), kInf);
  for (size_t li = 0; li < trie.num_labels(); ++li) {
    const std::string& esc = trie.escaped(li);
    std::vector<int> dp;
    g.suffix_costs(esc, dp);
    int node = 0;
    out[0] = std::min(out[0], dp[0]);
    for (size_t d = 0; d < esc.size(); ++d) {
      node = trie.child(node, static_cast<uint8_t>(esc[d]));
      out[node] = std::min(out[node], dp[d + 1]);
    }
  }
}
}  // namespace

Grammar::Grammar(std::shared_ptr<const Vocab> vocab, const CompiledSchema& schema, const std::vector<CoreSpec>& cores)
    : vocab_(std::move(vocab)), schema_(schema) {
  if (vocab_->prefix_space()) {
    for (auto& a : schema_.groups[G_START]) { a.bytes = " " + a.bytes; ++a.decided_at; }
  }
  for (int g = 0; g < G_COUNT; ++g) {
    const auto& alts = schema_.groups[g];
    cores_[g].assign(alts.size(), Core{});
    glue_dp_[g].resize(alts.size());
  }
  for (const auto& c : cores) {
    if (c.group < 0 || c.group >= G_COUNT || c.alt < 0 || c.alt >= static_cast<int>(schema_.groups[c.group].size()))
      throw std::invalid_argument("cores: bad (group, alt)");
    const std::string& lit = schema_.groups[c.group][c.alt].bytes;
    Core core;
    if (!c.spans.empty()) {
      core.cs = c.spans.front()[0];
      core.ce = c.spans.back()[1];
      if (core.cs < 0 || core.ce > static_cast<int>(lit.size()) || core.cs >= core.ce)
        throw std::invalid_argument("cores: span outside its literal");
      core.cut_start.assign(lit.size(), -1);
      core.token_at.assign(lit.size() + 1, -1);
      int expect = core.cs;
      for (const auto& sp : c.spans) {
        int a = sp[0], b = sp[1], id = sp[2];
        if (a != expect || b <= a) throw std::invalid_argument("cores: spans must be contiguous and non-empty");
        if (id < 0 || id >= vocab_->num_tokens() || vocab_->bytes(id) != lit.substr(a, b - a))
          throw std::invalid_argument("cores: token bytes do not match the literal");
        for (int p = a; p < b; ++p) core.cut_start[p] = static_cast<int16_t>(a);
        core.token_at[a] = id;
        expect = b;
      }
    }
    cores_[c.group][c.alt] = std::move(core);
  }
  // Literal costs with the core respected: outside the core any tokens (not crossing into it).
  for (int g = 0; g < G_COUNT; ++g) {
    for (size_t a = 0; a < schema_.groups[g].size(); ++a) {
      const std::string& lit = schema_.groups[g][a].bytes;
      const Core& core = cores_[g][a];
      const int L = static_cast<int>(lit.size());
      std::vector<int>& dp = glue_dp_[g][a];
      dp.assign(L + 1, kInf);
      dp[L] = 0;
      int cs = core.empty() ? L : core.cs, ce = core.empty() ? L : core.ce;
      for (int p = L - 1; p >= 0; --p) {
        if (p >= cs && p < ce) {
          if (core.token_at[p] >= 0) {
            int nxt = p + static_cast<int>(vocab_->bytes(core.token_at[p]).size());
            dp[p] = dp[nxt] < kInf ? 1 + dp[nxt] : kInf;
          }
          continue;
        }
        dp[p] = best_step(lit, p, p < cs ? cs : L, dp);  // outside the core: not into it
      }
    }
  }
  label_costs(*this, schema_.types, type_cost_);
  label_costs(*this, schema_.cats, cat_cost_);
  // Weights: "0,0,...,0" long enough for one weight per query character.
  int maxk = std::max(1, schema_.spec.max_query_chars);
  wstr_ = "0";
  for (int i = 1; i < maxk; ++i) wstr_ += ",0";
  suffix_costs(wstr_, wdp_);

  // Intent tails: walk each from an intent with one character written, until the tail ends
  // or leaves the literal after the intent (past it the text depends on the query: keep).
  if (schema_.has[4]) {
    QueryCtx dummy("a");
    Automaton a(schema_, dummy);
    const auto& groups = vocab_->quote_groups();
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      bool keep = false;
      for (int start = 0; start < 2 && !keep; ++start) {  // 0 or 1 characters already written
        GState st;
        st.mode = N_INTENT;
        st.nchars = static_cast<uint16_t>(start);
        keep = true;
        for (unsigned char b : groups[gi].tail) {
          bool in_glue = st.mode == M_GLUE;
          if (a.step(st, b).reject != OK) { keep = false; break; }
          if (in_glue && st.mode != M_GLUE && st.mode != N_END) break;
        }
      }
      if (keep) intent_groups_.push_back(static_cast<int>(gi));
    }
  }
}

int Grammar::weights_from_digit(int k) const {
  if (k <= 0) return 0;
  size_t len = static_cast<size_t>(2 * k - 1);
  if (len > wstr_.size()) return kInf;
  return wdp_[wstr_.size() - len];
}

int Grammar::weights_from_comma(int k) const {
  if (k <= 0) return 0;
  size_t len = static_cast<size_t>(2 * k);
  if (len > wstr_.size() + 1) return kInf;
  if (len == wstr_.size() + 1) return kInf;
  // ",0,0..." of length 2k is a suffix of wstr_ when 2k <= size.
  return wdp_[wstr_.size() - len];
}

}  // namespace qpfast
