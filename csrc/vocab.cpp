#include "vocab.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

namespace qpfast {

void ByteTrie::build(std::vector<std::pair<std::string, int>> entries) {
  std::sort(entries.begin(), entries.end());
  std::vector<std::vector<std::pair<uint8_t, uint32_t>>> kids(1);
  std::vector<std::vector<int>> toks(1);
  std::vector<uint32_t> path{0};  // path[d] = node at depth d of the previous entry
  const std::string* prev = nullptr;
  max_len_ = 0;
  for (const auto& e : entries) {
    const std::string& s = e.first;
    max_len_ = std::max<int>(max_len_, static_cast<int>(s.size()));
    size_t lcp = 0;
    if (prev) while (lcp < prev->size() && lcp < s.size() && (*prev)[lcp] == s[lcp]) ++lcp;
    path.resize(lcp + 1);
    for (size_t d = lcp; d < s.size(); ++d) {
      uint32_t node = static_cast<uint32_t>(kids.size());
      kids.emplace_back();
      toks.emplace_back();
      kids[path[d]].push_back({static_cast<uint8_t>(s[d]), node});
      path.push_back(node);
    }
    toks[path[s.size()]].push_back(e.second);
    prev = &s;
  }
  nodes_.assign(kids.size(), TNode{});
  root_.fill(-1);
  edge_byte_.clear();
  edge_to_.clear();
  tok_ids_.clear();
  for (size_t i = 0; i < kids.size(); ++i) {
    nodes_[i].first = static_cast<uint32_t>(edge_byte_.size());
    nodes_[i].count = static_cast<uint32_t>(kids[i].size());
    for (auto& kv : kids[i]) {
      edge_byte_.push_back(kv.first);
      edge_to_.push_back(kv.second);
      if (i == 0) root_[kv.first] = static_cast<int>(kv.second);
    }
    nodes_[i].tok_first = static_cast<uint32_t>(tok_ids_.size());
    nodes_[i].ntok = static_cast<uint32_t>(toks[i].size());
    for (int t : toks[i]) tok_ids_.push_back(t);
  }
}

namespace {

// Classifies a token as the body of a JSON string that starts at a character boundary.
// Returns 0 = unusable, 1 = safe (complete chars), 2 = partial (ends inside a character,
// `need` more bytes to go); `chars` = characters including a trailing partial one.
int classify_text(const std::string& s, int& chars, int& need) {
  chars = 0;
  need = 0;
  unsigned lo = 0x80, hi = 0xBF;
  for (unsigned char b : s) {
    if (need) {
      if (b < lo || b > hi) return 0;
      lo = 0x80; hi = 0xBF;
      if (--need == 0) ++chars;
      continue;
    }
    if (b == '"' || b == '\\' || b < 0x20 || b == 0x7F) return 0;
    if (b < 0x80) { ++chars; continue; }
    if (b >= 0xC2 && b <= 0xDF) { need = 1; if (b == 0xC2) lo = 0xA0; }
    else if (b >= 0xE0 && b <= 0xEF) { need = 2; if (b == 0xE0) lo = 0xA0; if (b == 0xED) hi = 0x9F; }
    else if (b >= 0xF0 && b <= 0xF4) { need = 3; if (b == 0xF0) lo = 0x90; if (b == 0xF4) hi = 0x8F; }
    else return 0;
  }
  if (s.empty()) return 0;
  if (need) { ++chars; return 2; }
  return 1;
}

}  // namespace

Vocab::Vocab(std::vector<std::string> token_bytes, std::vector<uint8_t> special, std::vector<int> end_ids,
             int vocab_size, bool prefix_space)
    : bytes_(std::move(token_bytes)), special_(std::move(special)), end_ids_(std::move(end_ids)),
      vocab_size_(vocab_size), prefix_space_(prefix_space) {
  const int n = static_cast<int>(bytes_.size());
  if (special_.size() != bytes_.size()) throw std::invalid_argument("special: one flag per token");
  if (vocab_size_ < n) throw std::invalid_argument("vocab_size: smaller than the tokenizer's vocabulary");
  if (end_ids_.empty()) throw std::invalid_argument("end_ids: the vocabulary has no end (EOS) token");
  end_flag_.assign(n, 0);
  for (int id : end_ids_) {
    if (id < 0 || id >= n) throw std::invalid_argument("end_ids: id out of range");
    end_flag_[id] = 1;
  }
  const int W = words();
  end_mask_.assign(W, 0);
  for (int id : end_ids_) end_mask_[id >> 5] |= 1u << (id & 31);

  std::vector<std::pair<std::string, int>> entries;
  entries.reserve(n);
  for (int i = 0; i < n; ++i)
    if (!special_[i] && !bytes_[i].empty()) entries.emplace_back(bytes_[i], i);
  trie_.build(std::move(entries));
  byte_tok_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    int node = trie_.child(0, static_cast<uint8_t>(b)), nt = 0;
    if (node < 0) continue;
    const int* ids = trie_.tokens_at(node, nt);
    if (nt) byte_tok_[b] = ids[0];
  }

  // Free-text classes.
  const int K = kClassMasks;
  safe_le_.assign(static_cast<size_t>(K + 1) * W, 0);
  for (auto& p : partial_le_) p.assign(static_cast<size_t>(K + 1) * W, 0);
  for (int i = 0; i < n; ++i) {
    if (special_[i] || bytes_[i].empty()) continue;
    int chars, need;
    int cls = classify_text(bytes_[i], chars, need);
    if (!cls) continue;
    if (chars > K) { long_text_.push_back({i, chars, cls == 1 ? 0 : need}); continue; }
    auto& v = cls == 1 ? safe_le_ : partial_le_[need - 1];
    v[static_cast<size_t>(chars) * W + (i >> 5)] |= 1u << (i & 31);
  }
  for (auto* v : {&safe_le_, &partial_le_[0], &partial_le_[1], &partial_le_[2]})
    for (int k = 1; k <= K; ++k)
      for (int w = 0; w < W; ++w) (*v)[static_cast<size_t>(k) * W + w] |= (*v)[static_cast<size_t>(k - 1) * W + w];

  // Quote/backslash tokens grouped by tail.
  std::map<std::pair<bool, std::string>, std::vector<std::pair<int, int>>> groups;
  for (int i = 0; i < n; ++i) {
    if (special_[i]) continue;
    const std::string& s = bytes_[i];
    size_t q = s.find_first_of("\"\\");
    if (q == std::string::npos) continue;
    int k = 0, need = 0;
    if (q > 0 && classify_text(s.substr(0, q), k, need) != 1) continue;
    groups[{q == 0, s.substr(q)}].push_back({k, i});
  }
  for (auto& kv : groups) {
    std::sort(kv.second.begin(), kv.second.end());
    quote_groups_.push_back(QuoteGroup{kv.first.second, std::move(kv.second)});
  }
}

}  // namespace qpfast
