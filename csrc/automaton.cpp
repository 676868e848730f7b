#include "automaton.h"

namespace qpfast {

const char* reject_message(Reject r) {
  switch (r) {
    case OK: return "ok";
    case R_LITERAL: return "unexpected character: the format requires a different literal here";
    case R_NO_ENTITY_ROOM: return "no query text is left for another entity";
    case R_ENTITY_EMPTY: return "entity text is empty";
    case R_ENTITY_SPAN: return "entity text is not a span of the query after the previous entity";
    case R_ENTITY_SPACE_EDGE: return "entity text starts or ends with a space";
    case R_TYPE: return "entity type is not in schema.entity_types";
    case R_SEG_EMPTY: return "segment is empty";
    case R_SEG_QUERY: return "segment does not continue the query (segments must spell out the query without spaces)";
    case R_SEG_INCOMPLETE: return "segmentation ends before covering the whole query";
    case R_SEG_EXTRA: return "segmentation already covers the whole query";
    case R_WEIGHT_RANGE: return "weight is not an integer level in [0, weight_levels-1]";
    case R_WEIGHT_FEW: return "fewer weights than segments";
    case R_WEIGHT_MANY: return "more weights than segments";
    case R_CAT: return "category is not in schema.categories";
    case R_INTENT_EMPTY: return "intent is empty";
    case R_INTENT_LONG: return "intent is longer than schema.intent_max_chars";
    case R_INTENT_CONTROL: return "intent contains a control character";
    case R_INTENT_UTF8: return "intent is not valid UTF-8";
    case R_INTENT_ESCAPE: return "unsupported escape (only \\\" and \\\\ occur in canonical qp-json/1)";
    case R_TRAILING: return "text after the closing brace";
    case R_SEG_SPACE: return "segment spans a space of the query (the schema breaks segments at spaces)";
    default: return "rejected";
  }
}

GState Automaton::initial() const {
  GState st;
  enter_group(st, G_START);
  return st;
}

void Automaton::enter_group(GState& st, Group g) const {
  st.mode = M_GLUE;
  st.group = g;
  st.gpos = 0;
  uint8_t alive = 0;
  const auto& alts = s_.groups[g];
  for (size_t i = 0; i < alts.size(); ++i)
    if (!alts[i].needs_entity || entity_room(st.prev_end)) alive |= static_cast<uint8_t>(1u << i);
  st.alive = alive;
}

void Automaton::enter_node(GState& st, Node n) const {
  st.mode = n;
  switch (n) {
    case N_TEXT: {
      st.m = 0;
      std::memset(st.cand, 0, sizeof(st.cand));
      for (int i = st.prev_end; i < q_.n; ++i)
        if (q_.cps[i] != ' ') st.cand[i >> 6] |= uint64_t{1} << (i & 63);
      break;
    }
    case N_TYPE: case N_CAT: st.trie = 0; break;
    case N_SEG: st.m = 0; break;
    case N_NUM: st.after_digit = 0; break;
    case N_INTENT: st.nchars = 0; st.need = 0; st.esc = 0; break;
    default: break;
  }
}

StepResult Automaton::step_glue(GState& st, uint8_t b) const {
  const auto& alts = s_.groups[st.group];
  uint8_t alive = 0;
  for (size_t i = 0; i < alts.size(); ++i) {
    if (!(st.alive >> i & 1)) continue;
    const auto& a = alts[i].bytes;
    if (st.gpos < a.size() && static_cast<uint8_t>(a[st.gpos]) == b) alive |= static_cast<uint8_t>(1u << i);
  }
  StepResult r;
  if (!alive) {
    // Say why: the byte fits an alternative that the state rules out, or a sibling group.
    for (size_t i = 0; i < alts.size(); ++i)
      if (st.gpos < alts[i].bytes.size() && static_cast<uint8_t>(alts[i].bytes[st.gpos]) == b && alts[i].needs_entity)
        return {R_NO_ENTITY_ROOM};
    auto fits = [&](Group g) {
      for (const auto& a : s_.groups[g])
        if (st.gpos < a.bytes.size() && static_cast<uint8_t>(a.bytes[st.gpos]) == b) return true;
      return false;
    };
    switch (st.group) {
      case G_SEG_MORE: r.reject = fits(G_SEG_DONE) ? R_SEG_INCOMPLETE : R_LITERAL; break;
      case G_SEG_DONE: r.reject = fits(G_SEG_MORE) ? R_SEG_EXTRA : R_LITERAL; break;
      case G_NUM_MORE: r.reject = fits(G_NUM_DONE) ? R_WEIGHT_FEW : (b >= '0' && b <= '9' ? R_WEIGHT_RANGE : R_LITERAL); break;
      case G_NUM_DONE: r.reject = fits(G_NUM_MORE) ? R_WEIGHT_MANY : (b >= '0' && b <= '9' ? R_WEIGHT_RANGE : R_LITERAL); break;
      default: r.reject = R_LITERAL;
    }
    return r;
  }
  st.alive = alive;
  ++st.gpos;
  r.glue_byte = true;
  for (size_t i = 0; i < alts.size(); ++i) {
    if ((alive >> i & 1) && alts[i].bytes.size() == st.gpos) {
      enter_node(st, alts[i].target);
      if (alts[i].target == N_INTENT) r.event = EV_INTENT_BEGIN;
      break;
    }
  }
  return r;
}

StepResult Automaton::step(GState& st, uint8_t b) const {
  switch (st.mode) {
    case M_GLUE: return step_glue(st, b);

    case N_TEXT: {
      const EscapedText& E = q_.q;
      int first = -1;
      for (int w = 0; w < 4 && first < 0; ++w)
        if (st.cand[w]) first = w * 64 + __builtin_ctzll(st.cand[w]);
      if (b == '"') {
        if (st.m == 0) return {R_ENTITY_EMPTY};
        size_t j = E.char_off[first] + st.m;
        if (E.boundary[j]) {
          if (q_.cps[E.char_at[j - 1]] == ' ') return {R_ENTITY_SPACE_EDGE};
          st.ent_start = static_cast<uint16_t>(first);
          st.ent_end = E.char_at[j];
          st.prev_end = st.ent_end;
          ++st.nents;
          enter_group(st, G_TEXT_END);
          StepResult r = step_glue(st, b);
          r.event = EV_ENTITY_END;
          return r;
        }
      }
      if (st.m == 0 && b == ' ') return {R_ENTITY_SPACE_EDGE};
      uint64_t nc[4] = {0, 0, 0, 0};
      bool any = false;
      for (int w = 0; w < 4; ++w) {
        uint64_t bits = st.cand[w];
        while (bits) {
          int s = w * 64 + __builtin_ctzll(bits);
          bits &= bits - 1;
          size_t j = E.char_off[s] + st.m;
          if (j < E.bytes.size() && static_cast<uint8_t>(E.bytes[j]) == b) {
            nc[w] |= uint64_t{1} << (s & 63);
            any = true;
          }
        }
      }
      if (!any) return {R_ENTITY_SPAN};
      std::memcpy(st.cand, nc, sizeof(nc));
      ++st.m;
      return {};
    }

    case N_TYPE: case N_CAT: {
      const LabelTrie& t = st.mode == N_TYPE ? s_.types : s_.cats;
      if (b == '"' && t.label(st.trie) >= 0) {
        StepResult r;
        int label = t.label(st.trie);
        bool is_type = st.mode == N_TYPE;
        enter_group(st, is_type ? G_TYPE_END : G_CAT_END);
        r = step_glue(st, b);
        r.event = is_type ? EV_TYPE : EV_CAT;
        r.value = label;
        return r;
      }
      int c = t.child(st.trie, b);
      if (c < 0) return {st.mode == N_TYPE ? R_TYPE : R_CAT};
      st.trie = c;
      return {};
    }

    case N_SEG: {
      const EscapedText& S = q_.qs;
      if (b == '"' && S.boundary[st.spos]) {
        if (st.m == 0) return {R_SEG_EMPTY};
        ++st.nseg;
        enter_group(st, st.spos < S.bytes.size() ? G_SEG_MORE : G_SEG_DONE);
        StepResult r = step_glue(st, b);
        r.event = EV_SEG_END;
        return r;
      }
      if (st.spos < S.bytes.size() && static_cast<uint8_t>(S.bytes[st.spos]) == b) {
        if (st.m > 0 && seg_break(st.spos)) return {R_SEG_SPACE};
        ++st.spos;
        ++st.m;
        return {};
      }
      return {st.spos < S.bytes.size() ? R_SEG_QUERY : R_SEG_EXTRA};
    }

    case N_NUM: {
      if (!st.after_digit) {
        if (b >= '0' && b < '0' + s_.spec.weight_levels) {
          st.after_digit = 1;
          ++st.nweights;
          if (st.nweights > st.nseg) return {R_WEIGHT_MANY};
          return {OK, EV_DIGIT, b - '0'};
        }
        if (b == ']') return {R_WEIGHT_FEW};
        return {b >= '0' && b <= '9' ? R_WEIGHT_RANGE : R_LITERAL};
      }
      enter_group(st, st.nweights < st.nseg ? G_NUM_MORE : G_NUM_DONE);
      return step_glue(st, b);
    }

    case N_INTENT: {
      if (st.esc) {
        if (b != '"' && b != '\\') return {R_INTENT_ESCAPE};
        st.esc = 0;
        ++st.nchars;
        return {};
      }
      if (st.need) {
        // After C2, 80..9F would encode a C1 control character (U+0080..U+009F).
        if (st.need == 1 && st.lo == 0xA0 && b >= 0x80 && b < 0xA0) return {R_INTENT_CONTROL};
        if (b < st.lo || b > st.hi) return {R_INTENT_UTF8};
        st.lo = 0x80;
        st.hi = 0xBF;
        if (--st.need == 0) ++st.nchars;
        return {};
      }
      if (b == '"') {
        if (st.nchars == 0) return {R_INTENT_EMPTY};
        enter_group(st, G_INTENT_END);
        StepResult r = step_glue(st, b);
        r.event = EV_INTENT_END;
        return r;
      }
      if (st.nchars >= s_.spec.intent_max_chars) return {R_INTENT_LONG};
      if (b == '\\') { st.esc = 1; return {}; }
      if (b < 0x20 || b == 0x7F) return {R_INTENT_CONTROL};
      if (b < 0x80) { ++st.nchars; return {}; }
      st.lo = 0x80;
      st.hi = 0xBF;
      if (b >= 0xC2 && b <= 0xDF) { st.need = 1; if (b == 0xC2) st.lo = 0xA0; }  // no C1 controls
      else if (b >= 0xE0 && b <= 0xEF) { st.need = 2; if (b == 0xE0) st.lo = 0xA0; if (b == 0xED) st.hi = 0x9F; }
      else if (b >= 0xF0 && b <= 0xF4) { st.need = 3; if (b == 0xF0) st.lo = 0x90; if (b == 0xF4) st.hi = 0x8F; }
      else return {R_INTENT_UTF8};
      return {};
    }

    default: return {R_TRAILING};
  }
}

}  // namespace qpfast
