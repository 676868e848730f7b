// The byte-level automaton of qp-json/1 for one (schema, query): the single definition of
// the language that the strict parser accepts and the constrained decoder enforces.
//
// State is a small POD (copied freely: the matcher snapshots it per token for rollback and
// per trie node while filling masks), and `step` never allocates.
#pragma once
#include <cstdint>
#include <cstring>

#include "query.h"
#include "schema.h"

namespace qpfast {

constexpr uint8_t M_GLUE = N_COUNT;  // mode value for "inside a literal"

enum Reject : uint8_t {
  OK = 0,
  R_LITERAL,           // byte does not continue the expected literal
  R_NO_ENTITY_ROOM,    // another entity cannot start: no query text left after the last one
  R_ENTITY_EMPTY,
  R_ENTITY_SPAN,       // entity text is not a span of the query after the previous entity
  R_ENTITY_SPACE_EDGE, // entity text starts or ends with a space
  R_TYPE,              // not a prefix of an entity type
  R_SEG_EMPTY,
  R_SEG_QUERY,         // segment does not continue the query
  R_SEG_INCOMPLETE,    // segmentation closed before covering the query
  R_SEG_EXTRA,         // another segment after the query is covered
  R_WEIGHT_RANGE,
  R_WEIGHT_FEW,        // fewer weights than segments
  R_WEIGHT_MANY,       // more weights than segments
  R_CAT,               // not a prefix of a category
  R_INTENT_EMPTY,
  R_INTENT_LONG,
  R_INTENT_CONTROL,
  R_INTENT_UTF8,
  R_INTENT_ESCAPE,
  R_TRAILING,          // text after the closing brace
  R_SEG_SPACE,         // segment goes on past a space of the query (schema.seg_breaks_at_spaces)
  R_COUNT
};

const char* reject_message(Reject r);

enum Event : uint8_t { EV_NONE = 0, EV_ENTITY_END, EV_TYPE, EV_SEG_END, EV_DIGIT, EV_CAT, EV_INTENT_BEGIN, EV_INTENT_END };

struct StepResult {
  Reject reject = OK;
  Event event = EV_NONE;
  int value = 0;          // label id / digit
  bool glue_byte = false; // the byte was part of a literal (at position gpos-1 of it)
};

struct GState {
  uint8_t mode = M_GLUE;
  uint8_t group = G_START;
  uint8_t alive = 0;   // bitmask of the group's alternatives still possible
  uint8_t esc = 0;     // intent: after a backslash
  uint8_t need = 0, lo = 0x80, hi = 0xBF;  // intent: pending UTF-8 continuation bytes
  uint8_t after_digit = 0;
  uint16_t gpos = 0;   // literal bytes matched
  uint16_t m = 0;      // entity text / segment bytes matched
  uint16_t spos = 0;   // bytes of q' covered by segments
  uint16_t nchars = 0; // intent code points
  int32_t trie = 0;    // label trie node
  uint16_t nseg = 0, nweights = 0, prev_end = 0, nents = 0;
  uint16_t ent_start = 0, ent_end = 0;  // the last completed entity (char offsets)
  uint64_t cand[4] = {0, 0, 0, 0};      // entity: possible start chars
};

class Automaton {
 public:
  Automaton(const CompiledSchema& schema, const QueryCtx& query) : s_(schema), q_(query) {}
  GState initial() const;
  // Advances `st` by one byte; on rejection `st` may be partially updated (callers step a copy).
  StepResult step(GState& st, uint8_t b) const;
  bool finished(const GState& st) const { return st.mode == N_END; }
  const CompiledSchema& schema() const { return s_; }
  const QueryCtx& query() const { return q_; }
  // May another entity start after char `prev_end`?
  bool entity_room(uint16_t prev_end) const { return prev_end < q_.n; }
  // Must a non-empty segment end before byte `spos` of q'? (schema.seg_breaks_at_spaces and a
  // space of q there)
  bool seg_break(uint16_t spos) const { return s_.spec.seg_breaks_at_spaces && q_.space_before[spos]; }

 private:
  void enter_group(GState& st, Group g) const;
  void enter_node(GState& st, Node n) const;
  StepResult step_glue(GState& st, uint8_t b) const;
  const CompiledSchema& s_;
  const QueryCtx& q_;
};

}  // namespace qpfast
