// A normalized query prepared for grounding: its code points, its JSON-escaped bytes, and
// the same for the query with spaces removed (what the segmentation must spell out).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qpfast {

constexpr int kMaxQueryChars = 256;  // entity candidates live in a fixed 256-bit set

struct EscapedText {
  std::string bytes;              // JSON-escaped UTF-8
  std::vector<uint16_t> char_off;  // char i starts at bytes[char_off[i]]; char_off[n] = size
  std::vector<uint8_t> boundary;  // boundary[j]: a char starts at byte j (size = bytes+1)
  std::vector<uint16_t> char_at;  // char index of byte j (size = bytes+1; last = n)
};

struct QueryCtx {
  // `normalized` must be the output of qpfast.normalize (valid UTF-8, no control chars).
  explicit QueryCtx(const std::string& normalized);
  std::string text;             // normalized query, UTF-8
  std::vector<uint32_t> cps;    // its code points
  int n = 0;                    // number of code points
  EscapedText q;                // escaped query
  EscapedText qs;               // escaped query without spaces (q')
  std::vector<uint16_t> qs_to_q;  // char i of q' is char qs_to_q[i] of q
  // space_before[j] (size qs.bytes + 1): byte j of q' starts a char that follows a space in q.
  std::vector<uint8_t> space_before;
};

}  // namespace qpfast
