// The compiled qp-json/1 schema: label tries and the literal "glue" between dynamic parts.
//
// A qp-json/1 text alternates fixed literals (glue) with dynamic parts that depend on the
// query or the label sets. Dynamic parts (Node) are: an entity text (TEXT), an entity type
// (TYPE), a segment (SEG), a weight digit (NUM), a category (CAT), the intent (INTENT), and
// END (after the closing brace). Each glue group lists the literal alternatives that may
// follow a dynamic part, each leading to the next dynamic part.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace qpfast {

enum Node : uint8_t { N_TEXT, N_TYPE, N_SEG, N_NUM, N_CAT, N_INTENT, N_END, N_COUNT };

enum Group : uint8_t {
  G_START, G_TEXT_END, G_TYPE_END, G_SEG_MORE, G_SEG_DONE, G_NUM_MORE, G_NUM_DONE,
  G_CAT_END, G_INTENT_END, G_COUNT
};

struct SchemaSpec {
  std::vector<std::string> fields;  // order, subset of ner seg weight cat intent
  std::vector<std::string> keys;    // JSON key per field (same order)
  std::vector<std::string> entity_types;
  int weight_levels = 4;
  std::vector<std::string> categories;
  int intent_max_chars = 32;
  int max_query_chars = 64;
  bool seg_breaks_at_spaces = false;  // no segment spans a space of the query
};

// A byte trie over JSON-escaped labels.
class LabelTrie {
 public:
  void build(const std::vector<std::string>& labels);
  // Child of `node` on byte `b`, or -1.
  int child(int node, uint8_t b) const {
    const Node_& n = nodes_[node];
    for (uint32_t i = n.first; i < n.first + n.count; ++i)
      if (edge_byte_[i] == b) return static_cast<int>(edge_to_[i]);
    return -1;
  }
  int label(int node) const { return nodes_[node].label; }  // label id ending here, or -1
  size_t size() const { return nodes_.size(); }
  int num_children(int node) const { return static_cast<int>(nodes_[node].count); }
  uint8_t child_byte(int node, int i) const { return edge_byte_[nodes_[node].first + i]; }
  const std::string& escaped(int label_id) const { return escaped_[label_id]; }
  size_t num_labels() const { return escaped_.size(); }

 private:
  struct Node_ {
    uint32_t first = 0, count = 0;
    int label = -1;
  };
  std::vector<Node_> nodes_;
  std::vector<uint8_t> edge_byte_;
  std::vector<uint32_t> edge_to_;
  std::vector<std::string> escaped_;
};

struct GlueAlt {
  std::string bytes;          // the literal
  Node target = N_END;        // dynamic part it leads to
  bool needs_entity = false;  // only when another entity can still start
  int decided_at = 0;         // bytes needed to tell this alternative from its siblings
};

struct CompiledSchema {
  explicit CompiledSchema(SchemaSpec spec);
  SchemaSpec spec;
  bool has[5] = {false, false, false, false, false};  // ner seg weight cat intent
  LabelTrie types, cats;
  std::array<std::vector<GlueAlt>, G_COUNT> groups;
};

}  // namespace qpfast
