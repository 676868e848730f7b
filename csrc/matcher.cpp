#include "matcher.h"
#include "parallel.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace qpfast {

namespace {
inline bool core_ok(const Core& c, int p, int ts) {
  if (c.empty() || p < c.cs) return true;
  if (p < c.ce) return ts == c.cut_start[p];
  return !(ts >= c.cs && ts < c.ce);
}
}  // namespace

Matcher::Matcher(std::shared_ptr<const Grammar> grammar, const std::string& normalized, int max_tokens)
    : g_(std::move(grammar)), query_(std::make_unique<QueryCtx>(normalized)), auto_(g_->schema(), *query_),
      budget_(max_tokens), skip_space_(g_->vocab().prefix_space()) {
  if (query_->n == 0) throw std::invalid_argument("query: empty after normalization");
  st_ = auto_.initial();
  hist_.reserve(96);
  text_len_.reserve(96);
  if (budget_ >= 0) {
    int need = cost(st_);
    if (need > budget_)
      throw std::invalid_argument("max_tokens: " + std::to_string(budget_) + " is below the minimum of " +
                                  std::to_string(need) + " tokens for this query and schema");
  }
}

bool Matcher::mstep(GState& st, TokCtx& tc, uint8_t b) const {
  if (tc.closed) return false;
  StepResult r = auto_.step(st, b);
  if (r.reject != OK) return false;
  const int nb = tc.nb++;
  if (r.glue_byte) {
    const int p = st.gpos - 1;
    const int ts = p - nb >= 0 ? p - nb : -1;
    uint8_t keep = 0;
    for (int a = 0; a < 8; ++a)
      if ((st.alive >> a & 1) && core_ok(g_->core(st.group, a), p, ts)) keep |= static_cast<uint8_t>(1u << a);
    if (!keep) return false;
    st.alive = keep;
    if (st.mode != M_GLUE) {  // the literal is complete
      const Core& c = g_->core(st.group, __builtin_ctz(keep));
      if (!c.empty() && ts >= c.cs && ts < c.ce) { tc.closed = true; tc.core_tok = c.token_at[ts]; }
    }
  }
  return true;
}

bool Matcher::end_ok(GState& st, const TokCtx& tc, int token) const {
  if (tc.closed) return token == tc.core_tok;
  if (st.mode != M_GLUE) return true;
  const int p = st.gpos;
  const int ts = p - tc.nb >= 0 ? p - tc.nb : -1;
  uint8_t keep = 0;
  for (int a = 0; a < 8; ++a) {
    if (!(st.alive >> a & 1)) continue;
    const Core& c = g_->core(st.group, a);
    if (!c.empty()) {
      if (p > c.cs && p < c.ce && c.token_at[p] < 0) continue;          // ends inside a core token
      if (ts >= c.cs && ts < c.ce && c.token_at[ts] != token) continue;  // not the canonical id
    }
    keep |= static_cast<uint8_t>(1u << a);
  }
  if (!keep) return false;
  st.alive = keep;
  return true;
}

bool Matcher::try_token(GState& st, int token) const {
  const Vocab& v = g_->vocab();
  if (token < 0 || token >= v.num_tokens()) return false;
  if (v.is_end(token)) return auto_.finished(st);
  if (v.special(token)) return false;
  TokCtx tc;
  const std::string& bytes = v.bytes(token);
  if (bytes.empty()) return false;
  for (unsigned char b : bytes)
    if (!mstep(st, tc, b)) return false;
  return end_ok(st, tc, token);
}

bool Matcher::accept(int token) {
  if (finished_) return false;
  GState s = st_;
  if (!try_token(s, token)) return false;
  const bool end = g_->vocab().is_end(token);
  if (budget_ >= 0) {
    int remaining = budget_ - num_tokens();
    if (remaining < 1) return false;
    if (!end && 1 + cost(s) > remaining) return false;
  }
  hist_.push_back(st_);
  text_len_.push_back(static_cast<uint32_t>(raw_.size()));
  if (end) finished_ = true;
  else raw_ += g_->vocab().bytes(token);
  st_ = s;
  return true;
}

void Matcher::rollback(int n) {
  if (n < 0 || n > num_tokens())
    throw std::invalid_argument("n: cannot roll back " + std::to_string(n) + " tokens (" +
                                std::to_string(num_tokens()) + " accepted)");
  if (n == 0) return;
  size_t k = hist_.size() - n;
  st_ = hist_[k];
  raw_.resize(text_len_[k]);
  hist_.resize(k);
  text_len_.resize(k);
  finished_ = false;
}

std::string Matcher::text() const {
  if (skip_space_ && !raw_.empty() && raw_[0] == ' ') return raw_.substr(1);
  return raw_;
}

std::vector<int> Matcher::forced_tokens() const {
  std::vector<int> out;
  if (finished_) return out;
  GState st = st_;
  int used = num_tokens();
  // A token is forced when every literal still possible requires it here (then it is the
  // only token the mask allows).
  while (st.mode == M_GLUE) {
    int tok = -1;
    bool agree = true;
    for (int a = 0; a < 8 && agree; ++a) {
      if (!(st.alive >> a & 1)) continue;
      const Core& c = g_->core(st.group, a);
      int t = (!c.empty() && st.gpos >= c.cs && st.gpos < c.ce) ? c.token_at[st.gpos] : -1;
      if (t < 0 || (tok >= 0 && t != tok)) agree = false;
      tok = t;
    }
    if (!agree || tok < 0) break;
    GState s2 = st;
    if (!try_token(s2, tok)) break;
    if (budget_ >= 0 && 1 + cost(s2) > budget_ - used) break;
    out.push_back(tok);
    st = s2;
    ++used;
  }
  return out;
}

// ---------------------------------------------------------------- costs (token budgets)

void Matcher::ensure_costs() const {
  if (costs_ready_) return;
  const QueryCtx& q = *query_;
  seg_costs(q);
  // Cheapest single non-space character at or after char i.
  char_min_.assign(q.n + 1, kInf);
  for (int i = q.n - 1; i >= 0; --i) {
    int c = kInf;
    if (q.cps[i] != ' ') c = g_->bytes_cost(q.q.bytes, q.q.char_off[i], q.q.char_off[i + 1]);
    char_min_[i] = std::min(c, char_min_[i + 1]);
  }
  // Bytes from E[j] to the nearest valid entity end at or after j (a character boundary
  // whose previous character is not a space). Written with single-byte tokens.
  const size_t nb = q.q.bytes.size();
  next_end_.assign(nb + 1, 0xFFFF);
  for (size_t j = nb + 1; j-- > 0;) {
    bool valid = q.q.boundary[j] && j > 0 && q.cps[q.q.char_at[j - 1]] != ' ';
    if (valid) next_end_[j] = 0;
    else if (j < nb && next_end_[j + 1] != 0xFFFF) next_end_[j] = static_cast<uint16_t>(next_end_[j + 1] + 1);
  }
  costs_ready_ = true;
}

// seg_dp_[i]: tokens for q'[i:] as the fewest segments: one, or with
// schema.seg_breaks_at_spaces one per space-free piece (the current one runs from i to the
// next space of q), plus the `","` glue between them; seg_pieces_[i]: how many segments.
void Matcher::seg_costs(const QueryCtx& q) const {
  const std::string& S = q.qs.bytes;
  const size_t n = S.size();
  seg_sep_ = g_->schema().groups[G_SEG_MORE].empty() ? 0 : g_->glue_cost(G_SEG_MORE, 0, 0);
  seg_dp_.assign(n + 1, 0);
  seg_pieces_.assign(n + 1, 0);
  std::vector<int> piece;
  size_t end = n;
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && !auto_.seg_break(static_cast<uint16_t>(start))) --start;
    g_->suffix_costs(S.substr(start, end - start), piece);
    const int rest = end < n ? seg_sep_ + seg_dp_[end] : 0;
    const int rest_pieces = end < n ? seg_pieces_[end] : 0;
    for (size_t i = start; i < end; ++i) {
      seg_dp_[i] = (piece[i - start] >= kInf || rest >= kInf) ? kInf : piece[i - start] + rest;
      seg_pieces_[i] = static_cast<uint16_t>(1 + rest_pieces);
    }
    end = start;
  }
}

int Matcher::group_cost(int g, Counters c, uint8_t alive_mask) const {
  const auto& alts = g_->schema().groups[g];
  int best = kInf;
  for (size_t a = 0; a < alts.size(); ++a) {
    if (!(alive_mask >> a & 1)) continue;
    // A new entity is never the cheapest way on (closing the list is shorter).
    if (alts[a].needs_entity && alive_mask != (1u << a)) continue;
    if (alts[a].needs_entity && !auto_.entity_room(c.prev_end)) continue;
    int lit = g_->glue_cost(g, static_cast<int>(a), 0);
    if (lit >= kInf) continue;
    int rest = enter_cost(alts[a].target, c);
    if (rest < kInf) best = std::min(best, lit + rest);
  }
  return best;
}

int Matcher::enter_cost(Node n, Counters c) const {
  auto add = [](int x, int y) { return (x >= kInf || y >= kInf) ? kInf : x + y; };
  const uint8_t all = 0xFF;
  switch (n) {
    case N_END: return 1;
    case N_TEXT: {
      Counters c2 = c;
      c2.prev_end = static_cast<uint16_t>(query_->n);
      return add(char_min_[c.prev_end], group_cost(G_TEXT_END, c2, all));
    }
    case N_TYPE: return add(g_->type_cost(0), group_cost(G_TYPE_END, c, all));
    case N_SEG: {
      Counters c2 = c;
      c2.spos = static_cast<uint16_t>(query_->qs.bytes.size());
      c2.nseg = static_cast<uint16_t>(c.nseg + seg_pieces_[c.spos]);
      return add(seg_dp_[c.spos], group_cost(G_SEG_DONE, c2, all));
    }
    case N_NUM: {
      Counters c2 = c;
      c2.nweights = c.nseg;
      return add(g_->weights_from_digit(c.nseg - c.nweights), group_cost(G_NUM_DONE, c2, all));
    }
    case N_CAT: return add(g_->cat_cost(0), group_cost(G_CAT_END, c, all));
    case N_INTENT: return add(1, group_cost(G_INTENT_END, c, all));
    default: return kInf;
  }
}

int Matcher::cost(const GState& st) const {
  ensure_costs();
  auto add = [](int x, int y) { return (x >= kInf || y >= kInf) ? kInf : x + y; };
  Counters c{st.spos, st.nseg, st.nweights, st.prev_end};
  const uint8_t all = 0xFF;
  switch (st.mode) {
    case M_GLUE: {
      const auto& alts = g_->schema().groups[st.group];
      int best = kInf;
      for (size_t a = 0; a < alts.size(); ++a) {
        if (!(st.alive >> a & 1)) continue;
        int lit = g_->glue_cost(st.group, static_cast<int>(a), st.gpos);
        best = std::min(best, add(lit, enter_cost(alts[a].target, c)));
      }
      return best;
    }
    case N_TEXT: {
      if (st.m == 0) return enter_cost(N_TEXT, c);
      int ext = kInf;
      const EscapedText& E = query_->q;
      for (int w = 0; w < 4; ++w) {
        uint64_t bits = st.cand[w];
        while (bits) {
          int s = w * 64 + __builtin_ctzll(bits);
          bits &= bits - 1;
          uint16_t d = next_end_[E.char_off[s] + st.m];
          if (d != 0xFFFF) ext = std::min<int>(ext, d);
        }
      }
      Counters c2 = c;
      c2.prev_end = static_cast<uint16_t>(query_->n);
      return add(ext, group_cost(G_TEXT_END, c2, all));
    }
    case N_TYPE: return add(g_->type_cost(st.trie), group_cost(G_TYPE_END, c, all));
    case N_SEG: {
      if (st.m == 0) return enter_cost(N_SEG, c);
      if (auto_.seg_break(st.spos)) {
        Counters c1 = c;   // the segment must close here: its quote, the comma, the next ones
        c1.nseg = static_cast<uint16_t>(c.nseg + 1);
        return add(seg_sep_, enter_cost(N_SEG, c1));
      }
      Counters c2 = c;
      c2.spos = static_cast<uint16_t>(query_->qs.bytes.size());
      c2.nseg = static_cast<uint16_t>(c.nseg + seg_pieces_[st.spos]);
      return add(seg_dp_[st.spos], group_cost(G_SEG_DONE, c2, all));
    }
    case N_NUM: {
      int k = st.nseg - st.nweights;
      Counters c2 = c;
      c2.nweights = st.nseg;
      int w = st.after_digit ? g_->weights_from_comma(k) : g_->weights_from_digit(k);
      return add(w, group_cost(G_NUM_DONE, c2, all));
    }
    case N_CAT: return add(g_->cat_cost(st.trie), group_cost(G_CAT_END, c, all));
    case N_INTENT: {
      int here = st.esc ? 1 : st.need ? st.need : (st.nchars == 0 ? 1 : 0);
      return add(here, group_cost(G_INTENT_END, c, all));
    }
    case N_END: return 1;
    default: return kInf;
  }
}

int Matcher::remaining_min_tokens() const { return finished_ ? 0 : cost(st_); }

bool Matcher::budget_ok(const GState& after) const {
  if (budget_ < 0) return true;
  return 1 + cost(after) <= budget_ - num_tokens();
}

// ---------------------------------------------------------------- masks

namespace {
// The few bytes that may come next, or -1 for "many" (then every child is tried).
int next_bytes(const Automaton& a, const GState& st, uint8_t* out) {
  int n = 0;
  auto add = [&](uint8_t b) {
    for (int i = 0; i < n; ++i) if (out[i] == b) return;
    out[n++] = b;
  };
  const CompiledSchema& s = a.schema();
  const QueryCtx& q = a.query();
  switch (st.mode) {
    case M_GLUE: {
      const auto& alts = s.groups[st.group];
      for (size_t i = 0; i < alts.size(); ++i)
        if ((st.alive >> i & 1) && st.gpos < alts[i].bytes.size()) add(static_cast<uint8_t>(alts[i].bytes[st.gpos]));
      return n;
    }
    case N_TEXT: {
      add('"');
      for (int w = 0; w < 4; ++w) {
        uint64_t bits = st.cand[w];
        while (bits) {
          int c = w * 64 + __builtin_ctzll(bits);
          bits &= bits - 1;
          size_t j = q.q.char_off[c] + st.m;
          if (j < q.q.bytes.size()) add(static_cast<uint8_t>(q.q.bytes[j]));
          if (n >= 24) return -1;
        }
      }
      return n;
    }
    case N_SEG:
      add('"');
      if (st.spos < q.qs.bytes.size() && !(st.m > 0 && a.seg_break(st.spos)))
        add(static_cast<uint8_t>(q.qs.bytes[st.spos]));
      return n;
    case N_NUM:
      if (st.after_digit) { add(','); add(']'); }
      else for (int d = 0; d < s.spec.weight_levels; ++d) add(static_cast<uint8_t>('0' + d));
      return n;
    case N_TYPE: case N_CAT: {
      const LabelTrie& t = st.mode == N_TYPE ? s.types : s.cats;
      if (t.num_children(st.trie) > 32) return -1;
      add('"');
      for (int i = 0; i < t.num_children(st.trie); ++i) add(t.child_byte(st.trie, i));
      return n;
    }
    case N_END: return 0;
    default: return -1;
  }
}
}  // namespace

void Matcher::dfs(int node, const GState& st, const TokCtx& tc, uint32_t* row) const {
  const ByteTrie& trie = g_->vocab().trie();
  auto visit = [&](int c, uint8_t b) {
    GState s2 = st;
    TokCtx t2 = tc;
    if (!mstep(s2, t2, b)) return;
    int nt;
    const int* ids = trie.tokens_at(c, nt);
    for (int i = 0; i < nt; ++i) {
      GState s3 = s2;
      if (!end_ok(s3, t2, ids[i])) continue;
      if (budget_ >= 0 && !budget_ok(s3)) continue;
      row[ids[i] >> 5] |= 1u << (ids[i] & 31);
    }
    if (trie.has_children(c)) dfs(c, s2, t2, row);
  };
  uint8_t bytes[32];
  int n = next_bytes(auto_, st, bytes);
  if (n >= 0) {
    for (int i = 0; i < n; ++i) {
      int c = trie.child(node, bytes[i]);
      if (c >= 0) visit(c, bytes[i]);
    }
  } else {
    for (uint32_t e = trie.child_begin(node); e < trie.child_end(node); ++e) visit(trie.edge_to(e), trie.edge_byte(e));
  }
}

void Matcher::fill_bitmask(uint32_t* row) const {
  const Vocab& v = g_->vocab();
  const int W = v.words();
  std::memset(row, 0, sizeof(uint32_t) * W);
  if (finished_ || auto_.finished(st_)) {
    std::memcpy(row, v.end_mask(), sizeof(uint32_t) * W);
    return;
  }
  if (st_.mode == N_INTENT && st_.need == 0 && !st_.esc) {
    // Free text: whole token classes at once, then the tokens that hold '"' or '\\'.
    const int rem = g_->schema().spec.intent_max_chars - st_.nchars;
    // A complete token leaves `close` tokens to go; one ending inside a character `need` more.
    int left = kInf, close = 0;
    if (budget_ >= 0) {
      ensure_costs();
      Counters c{st_.spos, st_.nseg, st_.nweights, st_.prev_end};
      close = group_cost(G_INTENT_END, c, 0xFF);
      left = budget_ - num_tokens();
    }
    auto fits = [&](int need) { return close < kInf && 1 + need + close <= left; };
    if (rem >= 1) {
      auto orr = [&](const uint32_t* m) { for (int w = 0; w < W; ++w) row[w] |= m[w]; };
      if (fits(0)) orr(v.safe_le(rem));
      for (int need = 1; need <= 3; ++need)
        if (fits(need)) orr(v.partial_le(need, rem));
      for (const auto& t : v.long_text_tokens())
        if (t.chars <= rem && fits(t.need)) row[t.id >> 5] |= 1u << (t.id & 31);
    }
    // Tokens with a quote or backslash: one walk per distinct tail, then every token of the
    // group whose leading characters still fit.
    const int maxc = g_->schema().spec.intent_max_chars;
    for (int gi : g_->intent_quote_groups()) {
      const auto& grp = v.quote_groups()[gi];
      const bool bare = grp.toks.front().first == 0;  // tokens that start with the tail
      GState s = st_;
      if (!bare && s.nchars == 0) s.nchars = 1;  // the leading characters make it non-empty
      const int before = s.nchars;
      TokCtx tc;
      tc.nb = bare ? 0 : 1;  // a leading part puts the token's start before any literal
      bool ok = true;
      for (unsigned char b : grp.tail)
        if (!mstep(s, tc, b)) { ok = false; break; }
      if (!ok) continue;
      int added = s.nchars - before + ((s.mode == N_INTENT && (s.need || s.esc)) ? 1 : 0);
      if (s.mode != N_INTENT && s.mode != M_GLUE && s.mode != N_END) added = 0;
      const int kmax = maxc - st_.nchars - added;
      if (budget_ >= 0) {
        GState sb = s;
        if (!end_ok(sb, tc, grp.toks.front().second) || !budget_ok(sb)) continue;
      }
      if (!bare) {  // the token started before any literal: end_ok does not depend on its id
        GState s3 = s;
        if (!end_ok(s3, tc, grp.toks.front().second)) continue;
      }
      for (const auto& kt : grp.toks) {
        if (kt.first > kmax) break;
        GState s3 = s;
        if (bare && !end_ok(s3, tc, kt.second)) continue;
        row[kt.second >> 5] |= 1u << (kt.second & 31);
      }
    }
    return;
  }
  dfs(0, st_, TokCtx{}, row);
}

void fill_bitmasks(const std::vector<const Matcher*>& matchers, uint32_t* data, int64_t stride_words, int nthreads) {
  for_row_ranges(static_cast<int>(matchers.size()), nthreads, [&](int lo, int hi) {
    for (int i = lo; i < hi; ++i)
      if (matchers[i]) matchers[i]->fill_bitmask(data + static_cast<int64_t>(i) * stride_words);
  });
}

}  // namespace qpfast
