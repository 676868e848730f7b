#include "json_reader.h"

#include <cstdlib>

#include "utf8.h"

namespace qpfast {

const JValue* JValue::get(const std::string& key) const {
  for (const auto& kv : obj)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

namespace {

constexpr int kMaxDepth = 64;

struct Reader {
  const std::string& s;
  size_t i = 0;
  explicit Reader(const std::string& text) : s(text) {}
  bool eof() const { return i >= s.size(); }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  int hex4(size_t at) const {
    if (at + 4 > s.size()) return -1;
    int v = 0;
    for (size_t k = at; k < at + 4; ++k) {
      char c = s[k];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else return -1;
    }
    return v;
  }
  // at s[i] == '"'
  void string(JValue& v) {
    v.kind = JValue::STR;
    ++i;
    while (i < s.size()) {
      char c = s[i];
      if (c == '"') { ++i; return; }
      if (c != '\\') { v.str.push_back(c); ++i; continue; }
      if (i + 1 >= s.size()) { ++i; break; }
      char e = s[i + 1];
      i += 2;
      switch (e) {
        case 'n': v.str.push_back('\n'); break;
        case 't': v.str.push_back('\t'); break;
        case 'r': v.str.push_back('\r'); break;
        case 'b': v.str.push_back('\b'); break;
        case 'f': v.str.push_back('\f'); break;
        case 'u': {
          int cp = hex4(i);
          if (cp < 0) { v.str += "\\u"; break; }
          i += 4;
          if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 <= s.size() && s[i] == '\\' && s[i + 1] == 'u') {
            int lo = hex4(i + 2);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
              i += 6;
            }
          }
          if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;  // lone surrogate
          utf8_append(v.str, static_cast<uint32_t>(cp));
          break;
        }
        default: v.str.push_back(e);  // \" \\ \/ and unknown escapes keep the character
      }
    }
    v.complete = false;
  }
  void number(JValue& v) {
    size_t start = i;
    if (s[i] == '-') ++i;
    while (i < s.size() && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == 'e' || s[i] == 'E' ||
                            s[i] == '+' || s[i] == '-'))
      ++i;
    std::string tok = s.substr(start, i - start);
    v.kind = JValue::NUM;
    char* end = nullptr;
    v.num = std::strtod(tok.c_str(), &end);
    if (end == tok.c_str()) { v.kind = JValue::BAD; return; }
    bool integral = tok.find_first_of(".eE") == std::string::npos && tok.size() <= 18;
    if (integral) { v.is_int = true; v.ival = std::strtoll(tok.c_str(), nullptr, 10); }
    if (i >= s.size()) v.complete = false;
  }
  bool word(const char* w) {
    size_t n = std::char_traits<char>::length(w);
    if (s.compare(i, n, w) == 0) { i += n; return true; }
    return false;
  }
  void value(JValue& v, int depth) {
    ws();
    if (eof()) { v.kind = JValue::BAD; v.complete = false; return; }
    char c = s[i];
    if (c == '"') return string(v);
    if (c == '-' || (c >= '0' && c <= '9')) return number(v);
    if (c == '{' || c == '[') {
      if (depth >= kMaxDepth) { v.kind = JValue::BAD; ++i; return; }
      return container(v, depth);
    }
    if (word("true")) { v.kind = JValue::BOOL; v.boolean = true; return; }
    if (word("false")) { v.kind = JValue::BOOL; return; }
    if (word("null")) { v.kind = JValue::NUL; return; }
    v.kind = JValue::BAD;
    ++i;  // skip one unexpected byte
  }
  void container(JValue& v, int depth) {
    bool obj = s[i] == '{';
    v.kind = obj ? JValue::OBJ : JValue::ARR;
    char close = obj ? '}' : ']';
    ++i;
    while (true) {
      ws();
      if (eof()) { v.complete = false; return; }
      if (s[i] == close) { ++i; return; }
      if (s[i] == ',') { ++i; continue; }
      if ((s[i] == '}' || s[i] == ']')) { ++i; return; }  // mismatched closer: end here
      if (obj) {
        if (s[i] != '"') { ++i; continue; }
        JValue key;
        string(key);
        ws();
        if (!eof() && s[i] == ':') ++i;
        JValue val;
        value(val, depth + 1);
        bool done = !key.complete || !val.complete;
        v.obj.emplace_back(std::move(key.str), std::move(val));
        if (done) { v.complete = false; return; }
      } else {
        JValue val;
        value(val, depth + 1);
        bool done = !val.complete;
        v.arr.push_back(std::move(val));
        if (done) { v.complete = false; return; }
      }
    }
  }
};

}  // namespace

bool read_first_object(const std::string& text, JValue& out) {
  size_t start = text.find('{');
  if (start == std::string::npos) return false;
  Reader r(text);
  r.i = start;
  r.container(out, 0);
  return true;
}

}  // namespace qpfast
