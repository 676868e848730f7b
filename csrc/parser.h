// parse(text, query, schema): the strict parser of qp-json/1 (exactly the matcher's
// language, with the byte position of the first error) and a lenient mode that recovers
// what it can from unconstrained model output.
#pragma once
#include <string>
#include <vector>

#include "schema.h"

namespace qpfast {

struct PEntity { std::string text, type; int start = 0, end = 0; };
struct PTerm { std::string text; int weight = -1; int start = 0, end = 0; };

struct ParseResult {
  bool ok = true;            // strict: parsed; lenient: always true
  std::string error;         // strict: reason; lenient: what was dropped ("" if nothing)
  long err_byte = -1;        // strict: byte offset of the first error
  int err_code = 0;
  std::vector<PEntity> entities;
  std::vector<PTerm> terms;
  bool has_cat = false, has_intent = false;
  std::string cat, intent;
};

// `normalized` is the normalized query (UTF-8).
ParseResult parse_strict(const std::string& text, const std::string& normalized, const CompiledSchema& schema);
ParseResult parse_lenient(const std::string& text, const std::string& normalized, const CompiledSchema& schema);

}  // namespace qpfast
