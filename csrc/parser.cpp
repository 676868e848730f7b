#include "parser.h"

#include <algorithm>
#include <stdexcept>

#include "automaton.h"
#include "json_reader.h"
#include "query.h"
#include "utf8.h"

namespace qpfast {

namespace {

std::string cps_to_utf8(const std::vector<uint32_t>& cps, int a, int b) {
  std::string out;
  for (int i = a; i < b; ++i) utf8_append(out, cps[i]);
  return out;
}

std::string unescape_canonical(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) ++i;
    out.push_back(s[i]);
  }
  return out;
}

// `s` as valid UTF-8 for a message: invalid bytes become U+FFFD, at most `max_cps` code
// points are kept (then "..."). Notes quote model output, which may be any bytes.
std::string printable(const std::string& s, size_t max_cps = 48) {
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0, count = 0;
  while (i < n) {
    if (count == max_cps) { out += "..."; break; }
    unsigned c = p[i];
    int need = -1;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) need = 0;
    else if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    int k = 1;
    if (need >= 0)
      for (; k <= need; ++k) {
        if (i + k >= n) break;
        unsigned cc = p[i + k];
        if (cc < (k == 1 ? lo : 0x80u) || cc > (k == 1 ? hi : 0xBFu)) break;
      }
    if (need >= 0 && k == need + 1) {
      out.append(s, i, need + 1);
      i += need + 1;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the maximal invalid prefix
      i += (need > 0 && k > 1) ? k : 1;
    }
    ++count;
  }
  return out;
}

// Leftmost occurrence of `needle` in `hay` at or after `from`, or -1.
int find_from(const std::vector<uint32_t>& hay, const std::vector<uint32_t>& needle, int from) {
  if (needle.empty()) return -1;
  auto it = std::search(hay.begin() + std::min<size_t>(from, hay.size()), hay.end(), needle.begin(), needle.end());
  return it == hay.end() ? -1 : static_cast<int>(it - hay.begin());
}

}  // namespace

ParseResult parse_strict(const std::string& text, const std::string& normalized, const CompiledSchema& schema) {
  ParseResult res;
  QueryCtx q(normalized);
  if (q.n == 0) {
    res.ok = false;
    res.error = "query is empty after normalization";
    res.err_byte = 0;
    return res;
  }
  Automaton a(schema, q);
  GState st = a.initial();
  size_t intent_begin = 0, weight_i = 0;
  uint16_t item_start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const uint8_t mode_before = st.mode;
    const uint16_t spos_before = st.spos;
    StepResult r = a.step(st, static_cast<uint8_t>(text[i]));
    if (r.reject != OK) {
      res.ok = false;
      res.err_code = r.reject;
      res.error = reject_message(r.reject);
      res.err_byte = static_cast<long>(i);
      return res;
    }
    if (mode_before != N_SEG && st.mode == N_SEG) item_start = st.spos;
    switch (r.event) {
      case EV_ENTITY_END:
        res.entities.push_back({cps_to_utf8(q.cps, st.ent_start, st.ent_end), "", st.ent_start, st.ent_end});
        break;
      case EV_TYPE: res.entities.back().type = schema.spec.entity_types[r.value]; break;
      case EV_SEG_END: {
        const EscapedText& S = q.qs;
        int c0 = S.char_at[item_start], c1 = S.char_at[spos_before];
        PTerm t;
        for (int c = c0; c < c1; ++c) utf8_append(t.text, q.cps[q.qs_to_q[c]]);
        t.start = q.qs_to_q[c0];
        t.end = q.qs_to_q[c1 - 1] + 1;
        res.terms.push_back(std::move(t));
        break;
      }
      case EV_DIGIT: res.terms[weight_i++].weight = r.value; break;
      case EV_CAT: res.has_cat = true; res.cat = schema.spec.categories[r.value]; break;
      case EV_INTENT_BEGIN: intent_begin = i + 1; break;
      case EV_INTENT_END:
        res.has_intent = true;
        res.intent = unescape_canonical(text.substr(intent_begin, i - intent_begin));
        break;
      default: break;
    }
  }
  if (!a.finished(st)) {
    res.ok = false;
    res.err_code = -1;
    res.error = "unexpected end of text";
    res.err_byte = static_cast<long>(text.size());
  }
  return res;
}

ParseResult parse_lenient(const std::string& text, const std::string& normalized, const CompiledSchema& schema) {
  ParseResult res;
  std::vector<std::string> notes;
  QueryCtx q(normalized);
  const auto& spec = schema.spec;
  if (q.n == 0) {
    res.error = "query is empty after normalization";
    return res;
  }
  JValue root;
  if (!read_first_object(text, root)) {
    res.error = "no JSON object in the output";
    return res;
  }
  if (!root.complete) notes.push_back("output is truncated");
  auto key_of = [&](const char* f) -> const JValue* {
    for (size_t i = 0; i < spec.fields.size(); ++i)
      if (spec.fields[i] == f) {
        const JValue* v = root.get(spec.keys[i]);
        if (!v) notes.push_back(std::string("missing '") + spec.keys[i] + "'");
        return v;
      }
    return nullptr;
  };
  // A label by its text. A string cut short by the end of the output counts only when it
  // is a whole label and no longer label starts with it (so "美妆" cut from "美妆>护肤" is
  // not taken for a label "美妆").
  auto label_id = [](const std::vector<std::string>& labels, const JValue& v) {
    if (v.kind != JValue::STR) return -1;
    const std::string& s = v.str;
    int id = -1;
    for (size_t i = 0; i < labels.size(); ++i) {
      if (labels[i] == s) id = static_cast<int>(i);
      else if (!v.complete && labels[i].size() > s.size() && labels[i].compare(0, s.size(), s) == 0) return -1;
    }
    return id;
  };

  if (schema.has[0]) {
    if (const JValue* ner = key_of("ner")) {
      if (ner->kind != JValue::ARR) {
        notes.push_back("ner is not a list");
      } else {
        int prev_end = 0;
        for (const auto& item : ner->arr) {
          if (item.kind != JValue::ARR || item.arr.size() < 2 || item.arr[0].kind != JValue::STR ||
              item.arr[1].kind != JValue::STR) {
            notes.push_back("dropped a malformed entity");
            continue;
          }
          std::string etext = item.arr[0].str;
          while (!etext.empty() && etext.front() == ' ') etext.erase(etext.begin());
          while (!etext.empty() && etext.back() == ' ') etext.pop_back();
          std::vector<uint32_t> ecps;
          int type = label_id(spec.entity_types, item.arr[1]);
          if (type < 0) { notes.push_back("dropped entity with unknown or cut type '" + printable(item.arr[1].str) + "'"); continue; }
          int at = utf8_decode(etext, ecps) ? find_from(q.cps, ecps, prev_end) : -1;
          if (at < 0) { notes.push_back("dropped ungrounded entity '" + printable(etext) + "'"); continue; }
          int end = at + static_cast<int>(ecps.size());
          res.entities.push_back({cps_to_utf8(q.cps, at, end), spec.entity_types[type], at, end});
          prev_end = end;
        }
      }
    }
  }
  if (schema.has[1]) {
    if (const JValue* seg = key_of("seg")) {
      std::vector<std::string> items;
      bool good = seg->kind == JValue::ARR;
      if (good)
        for (const auto& it : seg->arr) {
          if (it.kind != JValue::STR) { good = false; break; }
          std::string s;
          for (char c : it.str) if (c != ' ') s.push_back(c);
          if (!s.empty()) items.push_back(s);
        }
      // The items must spell out q' exactly.
      std::vector<PTerm> terms;
      bool spans_space = false;  // schema.seg_breaks_at_spaces: a segment goes on over a space
      size_t qi = 0;  // char index into q'
      std::vector<uint32_t> qs_cps;
      for (int i = 0; i < q.n; ++i) if (q.cps[i] != ' ') qs_cps.push_back(q.cps[i]);
      for (const auto& s : items) {
        std::vector<uint32_t> c;
        if (!good || !utf8_decode(s, c) || qi + c.size() > qs_cps.size() ||
            !std::equal(c.begin(), c.end(), qs_cps.begin() + qi)) { good = false; break; }
        PTerm t;
        t.text = s;
        t.start = q.qs_to_q[qi];
        t.end = q.qs_to_q[qi + c.size() - 1] + 1;
        if (schema.spec.seg_breaks_at_spaces && t.end - t.start != static_cast<int>(c.size())) spans_space = true;
        terms.push_back(t);
        qi += c.size();
      }
      if (good && qi == qs_cps.size() && !terms.empty() && !spans_space) {
        res.terms = std::move(terms);
      } else {
        notes.push_back(spans_space ? "dropped seg: a segment spans a space of the query"
                                    : "dropped seg: it does not partition the query");
      }
    }
  }
  if (schema.has[2]) {
    if (const JValue* w = key_of("weight")) {
      bool good = w->kind == JValue::ARR && !res.terms.empty() && w->arr.size() == res.terms.size();
      if (good)
        for (const auto& x : w->arr)
          if (x.kind != JValue::NUM || !x.is_int || x.ival < 0 || x.ival >= spec.weight_levels) good = false;
      if (good) {
        for (size_t i = 0; i < w->arr.size(); ++i) res.terms[i].weight = static_cast<int>(w->arr[i].ival);
      } else {
        notes.push_back("dropped weight: not one level in range per segment");
      }
    }
  }
  if (schema.has[3]) {
    if (const JValue* c = key_of("cat")) {
      int id = label_id(spec.categories, *c);
      if (id >= 0) { res.has_cat = true; res.cat = spec.categories[id]; }
      else notes.push_back("dropped category not in schema.categories");
    }
  }
  if (schema.has[4]) {
    if (const JValue* it = key_of("intent")) {
      std::vector<uint32_t> cps;
      if (it->kind == JValue::STR && utf8_decode(it->str, cps)) {
        std::vector<uint32_t> kept;
        for (uint32_t cp : cps) if (!is_control(cp)) kept.push_back(cp);
        if (kept.size() != cps.size()) notes.push_back("removed control characters from intent");
        if (kept.size() > static_cast<size_t>(spec.intent_max_chars)) {
          kept.resize(spec.intent_max_chars);
          notes.push_back("truncated intent");
        }
        if (!kept.empty()) { res.has_intent = true; res.intent = cps_to_utf8(kept, 0, static_cast<int>(kept.size())); }
        else notes.push_back("dropped empty intent");
      } else {
        notes.push_back("dropped intent: not a string");
      }
    }
  }
  for (size_t i = 0; i < notes.size(); ++i) res.error += (i ? "; " : "") + notes[i];
  return res;
}

}  // namespace qpfast
