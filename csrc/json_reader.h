// A tolerant JSON reader for unconstrained model output: it reads standard JSON, and when
// the text is cut short it closes what is open and marks the value incomplete. It never
// throws and bounds its recursion depth.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qpfast {

struct JValue {
  enum Kind : uint8_t { NUL, BOOL, NUM, STR, ARR, OBJ, BAD } kind = BAD;
  bool complete = true;   // false when the text ended inside this value
  bool boolean = false;
  bool is_int = false;
  long long ival = 0;
  double num = 0;
  std::string str;
  std::vector<JValue> arr;
  std::vector<std::pair<std::string, JValue>> obj;
  const JValue* get(const std::string& key) const;  // first member with this key
};

// Reads the first JSON object in `text` (skipping anything before its '{').
// Returns false when there is no '{' at all.
bool read_first_object(const std::string& text, JValue& out);

}  // namespace qpfast
