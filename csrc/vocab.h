// Vocab: the bytes of every token id of a model, a byte trie over them, and precomputed
// token-class masks for free-text fields. Immutable after construction; share it freely.
#pragma once
#include <array>
#include <map>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qpfast {

// A byte trie over (bytes, token id) entries; node 0 is the root, children sorted by byte.
class ByteTrie {
 public:
  // entries: (bytes, token id); the strings must outlive the call only.
  void build(std::vector<std::pair<const std::string*, int>> entries);
  int child(int node, uint8_t b) const {
    if (node == 0) return root_[b];
    const TNode& n = nodes_[node];
    uint32_t lo = n.first, hi = n.first + n.count;
    while (lo < hi) {
      uint32_t mid = (lo + hi) >> 1;
      if (edge_byte_[mid] < b) lo = mid + 1; else hi = mid;
    }
    return (lo < n.first + n.count && edge_byte_[lo] == b) ? static_cast<int>(edge_to_[lo]) : -1;
  }
  uint32_t child_begin(int node) const { return nodes_[node].first; }
  uint32_t child_end(int node) const { return nodes_[node].first + nodes_[node].count; }
  uint8_t edge_byte(uint32_t e) const { return edge_byte_[e]; }
  int edge_to(uint32_t e) const { return static_cast<int>(edge_to_[e]); }
  bool has_children(int node) const { return nodes_[node].count != 0; }
  const int* tokens_at(int node, int& n) const {
    n = static_cast<int>(nodes_[node].ntok);
    return tok_ids_.data() + nodes_[node].tok_first;
  }
  size_t size() const { return nodes_.size(); }
  int max_len() const { return max_len_; }

 private:
  struct TNode { uint32_t first = 0, count = 0, tok_first = 0, ntok = 0; };
  std::vector<TNode> nodes_;
  std::array<int, 256> root_{};
  std::vector<uint8_t> edge_byte_;
  std::vector<uint32_t> edge_to_;
  std::vector<int> tok_ids_;
  int max_len_ = 0;
};

// Token strings of a Hugging Face vocabulary -> token bytes. mode: "byte_level" (GPT-2's
// byte-to-unicode alphabet: Qwen, Llama-3), "sentencepiece" ("▁" is a space, "<0xNN>" a
// byte), anything else: the string's own UTF-8.
std::vector<std::string> decode_pieces(const std::vector<std::string>& pieces, const std::string& mode);

class Vocab {
 public:
  // token_bytes[i]: bytes of token i (ids < token_bytes.size()); special[i]: control/special
  // tokens (never text); end_ids: tokens that end generation; vocab_size >= token count (the
  // model's lm_head rows; ids past the tokenizer are never allowed); prefix_space: the
  // tokenizer prepends a space to the first token of a text (SentencePiece dummy prefix).
  Vocab(std::vector<std::string> token_bytes, std::vector<uint8_t> special, std::vector<int> end_ids,
        int vocab_size, bool prefix_space);

  int size() const { return vocab_size_; }
  int words() const { return (vocab_size_ + 31) / 32; }
  int num_tokens() const { return static_cast<int>(bytes_.size()); }
  const std::string& bytes(int id) const { return bytes_[id]; }
  bool special(int id) const { return special_[id] != 0; }
  bool is_end(int id) const { return id >= 0 && id < num_tokens() && end_flag_[id]; }
  const std::vector<int>& end_ids() const { return end_ids_; }
  bool prefix_space() const { return prefix_space_; }

  // Byte trie over the non-special tokens.
  const ByteTrie& trie() const { return trie_; }

  // --- free-text classes (a JSON string body starting at a character boundary) ---
  // Tokens of only complete, non-control characters and no '"' or '\\', with at most k of them
  // (k <= kClassMasks; longer tokens are in long_text_tokens()).
  const uint32_t* safe_le(int k) const { return class_row(safe_le_, k); }
  // Same, but ending inside a valid UTF-8 sequence that still needs `need` (1..3) bytes; k
  // counts that last partial character.
  const uint32_t* partial_le(int need, int k) const { return class_row(partial_le_[need - 1], k); }
  struct LongText { int id, chars, need; };
  const std::vector<LongText>& long_text_tokens() const { return long_text_; }
  static constexpr int kClassMasks = 64;
  // Tokens that hold '"' or '\\', grouped by their tail from the first such byte on; the part
  // before it is `k` complete safe characters (k = 0: the token starts with the tail).
  struct QuoteGroup {
    std::string tail;
    std::vector<std::pair<int, int>> toks;  // (k, token id), sorted by k
  };
  const std::vector<QuoteGroup>& quote_groups() const { return quote_groups_; }
  const uint32_t* end_mask() const { return end_mask_.data(); }

 private:
  const uint32_t* class_row(const std::vector<uint32_t>& v, int k) const {
    if (k > kClassMasks) k = kClassMasks;
    if (k < 0) k = 0;
    return v.data() + static_cast<size_t>(k) * words();
  }
  std::vector<std::string> bytes_;
  std::vector<uint8_t> special_, end_flag_;
  std::vector<int> end_ids_;
  int vocab_size_;
  bool prefix_space_;
  ByteTrie trie_;
  std::vector<QuoteGroup> quote_groups_;
  std::vector<uint32_t> safe_le_, partial_le_[3], end_mask_;
  std::vector<LongText> long_text_;
};

}  // namespace qpfast
