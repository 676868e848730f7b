// UTF-8 helpers shared by the parser, the automaton and the vocabulary.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qpfast {

// Decodes valid UTF-8 into code points. Returns false on invalid input.
bool utf8_decode(const std::string& s, std::vector<uint32_t>& out);
// Appends the UTF-8 encoding of code point `cp` to `out`.
void utf8_append(std::string& out, uint32_t cp);
// True for the code points of Unicode category Cc (C0, DEL, C1).
inline bool is_control(uint32_t cp) { return cp < 0x20 || (cp >= 0x7F && cp < 0xA0); }
// Appends `s` JSON-escaped as json.dumps(ensure_ascii=False) does for the strings qp-json/1
// can hold (only '"' and '\\' are escaped; control characters never occur there).
void json_escape_append(std::string& out, const std::string& s);

}  // namespace qpfast
