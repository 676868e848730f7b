#include "query.h"

#include <stdexcept>

#include "utf8.h"

namespace qpfast {

namespace {
void build_escaped(const std::vector<uint32_t>& cps, EscapedText& e) {
  e.bytes.clear();
  e.char_off.clear();
  for (uint32_t cp : cps) {
    e.char_off.push_back(static_cast<uint16_t>(e.bytes.size()));
    if (cp == '"' || cp == '\\') e.bytes.push_back('\\');
    utf8_append(e.bytes, cp);
  }
  e.char_off.push_back(static_cast<uint16_t>(e.bytes.size()));
  e.boundary.assign(e.bytes.size() + 1, 0);
  e.char_at.assign(e.bytes.size() + 1, 0);
  for (size_t i = 0; i + 1 < e.char_off.size(); ++i) {
    e.boundary[e.char_off[i]] = 1;
    for (size_t j = e.char_off[i]; j < e.char_off[i + 1]; ++j) e.char_at[j] = static_cast<uint16_t>(i);
  }
  e.boundary[e.bytes.size()] = 1;
  e.char_at[e.bytes.size()] = static_cast<uint16_t>(cps.size());
}
}  // namespace

QueryCtx::QueryCtx(const std::string& normalized) : text(normalized) {
  if (!utf8_decode(text, cps)) throw std::invalid_argument("query: not valid UTF-8");
  if (cps.size() > static_cast<size_t>(kMaxQueryChars))
    throw std::invalid_argument("query: longer than 256 code points after normalization");
  for (uint32_t cp : cps)
    if (is_control(cp)) throw std::invalid_argument("query: contains a control character (normalize it first)");
  n = static_cast<int>(cps.size());
  build_escaped(cps, q);
  std::vector<uint32_t> ns;
  for (int i = 0; i < n; ++i) {
    if (cps[i] == ' ') continue;
    ns.push_back(cps[i]);
    qs_to_q.push_back(static_cast<uint16_t>(i));
  }
  build_escaped(ns, qs);
  space_before.assign(qs.bytes.size() + 1, 0);
  for (size_t i = 1; i < qs_to_q.size(); ++i)
    if (qs_to_q[i] != qs_to_q[i - 1] + 1) space_before[qs.char_off[i]] = 1;
}

}  // namespace qpfast
