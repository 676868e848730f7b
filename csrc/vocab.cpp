#include "vocab.h"

#include "utf8.h"

#include <algorithm>
#include <cctype>
#include <numeric>
#include <stdexcept>

namespace qpfast {

void ByteTrie::build(std::vector<std::pair<const std::string*, int>> entries) {
  std::sort(entries.begin(), entries.end(), [](const auto& x, const auto& y) {
    int c = x.first->compare(*y.first);
    return c < 0 || (c == 0 && x.second < y.second);
  });
  // Insert in byte order, keeping each node's children as a linked list (first child, next
  // sibling); children arrive in increasing byte order, so flattening keeps them sorted.
  std::vector<uint32_t> first{0}, last{0}, next{0};
  std::vector<uint8_t> byte{0};
  std::vector<int> tok_head{-1}, tok_next(entries.size(), -1);
  std::vector<uint32_t> path{0};
  const std::string* prev = nullptr;
  max_len_ = 0;
  const uint32_t none = 0;  // node 0 (the root) is never a child
  for (size_t k = 0; k < entries.size(); ++k) {
    const std::string& s = *entries[k].first;
    max_len_ = std::max<int>(max_len_, static_cast<int>(s.size()));
    size_t lcp = 0;
    if (prev) while (lcp < prev->size() && lcp < s.size() && (*prev)[lcp] == s[lcp]) ++lcp;
    path.resize(lcp + 1);
    for (size_t d = lcp; d < s.size(); ++d) {
      uint32_t node = static_cast<uint32_t>(first.size());
      first.push_back(none);
      last.push_back(none);
      next.push_back(none);
      byte.push_back(static_cast<uint8_t>(s[d]));
      tok_head.push_back(-1);
      uint32_t parent = path[d];
      if (last[parent] == none) first[parent] = node; else next[last[parent]] = node;
      last[parent] = node;
      path.push_back(node);
    }
    // Append this entry to the node's token list (entries with equal bytes stay in id order).
    int& head = tok_head[path[s.size()]];
    if (head < 0) head = static_cast<int>(k);
    else { int t = head; while (tok_next[t] >= 0) t = tok_next[t]; tok_next[t] = static_cast<int>(k); }
    prev = &s;
  }
  const size_t n = first.size();
  nodes_.assign(n, TNode{});
  root_.fill(-1);
  edge_byte_.clear();
  edge_to_.clear();
  tok_ids_.clear();
  edge_byte_.reserve(n);
  edge_to_.reserve(n);
  tok_ids_.reserve(entries.size());
  for (size_t i = 0; i < n; ++i) {
    nodes_[i].first = static_cast<uint32_t>(edge_byte_.size());
    for (uint32_t c = first[i]; c != none; c = next[c]) {
      edge_byte_.push_back(byte[c]);
      edge_to_.push_back(c);
      if (i == 0) root_[byte[c]] = static_cast<int>(c);
    }
    nodes_[i].count = static_cast<uint32_t>(edge_byte_.size()) - nodes_[i].first;
    nodes_[i].tok_first = static_cast<uint32_t>(tok_ids_.size());
    for (int t = tok_head[i]; t >= 0; t = tok_next[t]) tok_ids_.push_back(entries[t].second);
    nodes_[i].ntok = static_cast<uint32_t>(tok_ids_.size()) - nodes_[i].tok_first;
  }
}

std::vector<std::string> decode_pieces(const std::vector<std::string>& pieces, const std::string& mode) {
  std::vector<std::string> out(pieces.size());
  if (mode == "byte_level") {
    // GPT-2 bytes_to_unicode, inverted: printable bytes map to themselves, the others to
    // U+0100.. in byte order.
    std::array<int, 324> to_byte;
    to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_byte[printable ? b : 256 + extra++] = b;
    }
    std::vector<uint32_t> cps;
    for (size_t i = 0; i < pieces.size(); ++i) {
      bool ok = utf8_decode(pieces[i], cps);
      std::string& s = out[i];
      for (uint32_t cp : cps) {
        if (!ok || cp >= to_byte.size() || to_byte[cp] < 0) { ok = false; break; }
        s.push_back(static_cast<char>(to_byte[cp]));
      }
      if (!ok) s = pieces[i];  // not in the byte alphabet: the text itself
    }
  } else if (mode == "sentencepiece") {
    static const char kSpace[] = "\xe2\x96\x81";  // U+2581
    for (size_t i = 0; i < pieces.size(); ++i) {
      const std::string& p = pieces[i];
      if (p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>' && std::isxdigit(static_cast<unsigned char>(p[3])) &&
          std::isxdigit(static_cast<unsigned char>(p[4]))) {
        out[i] = std::string(1, static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
        continue;
      }
      std::string& s = out[i];
      for (size_t k = 0; k < p.size();) {
        if (p.compare(k, 3, kSpace) == 0) { s.push_back(' '); k += 3; }
        else s.push_back(p[k++]);
      }
    }
  } else {
    out = pieces;
  }
  return out;
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

  std::vector<std::pair<const std::string*, int>> entries;
  entries.reserve(n);
  for (int i = 0; i < n; ++i)
    if (!special_[i] && !bytes_[i].empty()) entries.emplace_back(&bytes_[i], i);
  trie_.build(std::move(entries));

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
