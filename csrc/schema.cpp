#include "schema.h"

#include <algorithm>
#include <map>
#include <stdexcept>
#include <utility>

#include "utf8.h"

namespace qpfast {

void LabelTrie::build(const std::vector<std::string>& labels) {
  // Build with a map-based trie, then flatten to sorted edge arrays.
  struct TmpNode { std::map<uint8_t, int> kids; int label = -1; };
  std::vector<TmpNode> tmp(1);
  escaped_.clear();
  for (size_t li = 0; li < labels.size(); ++li) {
    std::string esc;
    json_escape_append(esc, labels[li]);
    escaped_.push_back(esc);
    int cur = 0;
    for (unsigned char b : esc) {
      auto it = tmp[cur].kids.find(b);
      if (it == tmp[cur].kids.end()) {
        tmp.push_back(TmpNode{});
        int id = static_cast<int>(tmp.size()) - 1;
        tmp[cur].kids[b] = id;
        cur = id;
      } else {
        cur = it->second;
      }
    }
    if (tmp[cur].label >= 0) throw std::invalid_argument("duplicate label: " + labels[li]);
    tmp[cur].label = static_cast<int>(li);
  }
  nodes_.assign(tmp.size(), Node_{});
  edge_byte_.clear();
  edge_to_.clear();
  for (size_t i = 0; i < tmp.size(); ++i) {
    nodes_[i].first = static_cast<uint32_t>(edge_byte_.size());
    nodes_[i].count = static_cast<uint32_t>(tmp[i].kids.size());
    nodes_[i].label = tmp[i].label;
    for (auto& kv : tmp[i].kids) {
      edge_byte_.push_back(kv.first);
      edge_to_.push_back(static_cast<uint32_t>(kv.second));
    }
  }
}

namespace {

struct Alt { std::string s; Node n; bool needs_entity; };
using Alts = std::vector<Alt>;

int field_index(const std::string& f) {
  static const char* names[5] = {"ner", "seg", "weight", "cat", "intent"};
  for (int i = 0; i < 5; ++i) if (f == names[i]) return i;
  throw std::invalid_argument("fields: unknown field " + f);
}

Alts prefixed(const std::string& p, const Alts& alts) {
  Alts out;
  for (const auto& a : alts) out.push_back({p + a.s, a.n, a.needs_entity});
  return out;
}

}  // namespace

CompiledSchema::CompiledSchema(SchemaSpec s) : spec(std::move(s)) {
  const auto& F = spec.fields;
  if (F.empty()) throw std::invalid_argument("fields: must not be empty");
  if (spec.keys.size() != F.size()) throw std::invalid_argument("keys: one key per field");
  if (spec.weight_levels < 2 || spec.weight_levels > 10)
    throw std::invalid_argument("weight_levels: must be in [2, 10]");
  std::vector<int> fi;
  for (const auto& f : F) {
    int i = field_index(f);
    if (has[i]) throw std::invalid_argument("fields: duplicate field " + f);
    has[i] = true;
    fi.push_back(i);
  }
  if (has[2]) {
    auto pos = [&](int k) { return std::find(fi.begin(), fi.end(), k) - fi.begin(); };
    if (!has[1] || pos(1) > pos(2)) throw std::invalid_argument("fields: 'weight' needs 'seg' earlier");
  }
  if (has[0] && spec.entity_types.empty()) throw std::invalid_argument("entity_types: must not be empty");
  if (has[3] && spec.categories.empty()) throw std::invalid_argument("categories: must not be empty");
  types.build(spec.entity_types);
  cats.build(spec.categories);

  const int nf = static_cast<int>(F.size());
  // opening(i): from the key of field i to its first dynamic part; after_field(i): what may
  // follow the value of field i.
  std::vector<Alts> after(nf), opening(nf);
  for (int i = nf - 1; i >= 0; --i) {
    after[i] = (i == nf - 1) ? Alts{{"}", N_END, false}} : prefixed(",", opening[i + 1]);
    std::string key = "\"" + spec.keys[i] + "\":";
    switch (fi[i]) {
      case 0: {  // ner
        Alts a{{key + "[[\"", N_TEXT, true}};
        for (auto& x : prefixed(key + "[]", after[i])) a.push_back(x);
        opening[i] = a;
        break;
      }
      case 1: opening[i] = {{key + "[\"", N_SEG, false}}; break;
      case 2: opening[i] = {{key + "[", N_NUM, false}}; break;
      case 3: opening[i] = {{key + "\"", N_CAT, false}}; break;
      default: opening[i] = {{key + "\"", N_INTENT, false}}; break;
    }
  }
  auto idx = [&](int k) { return static_cast<int>(std::find(fi.begin(), fi.end(), k) - fi.begin()); };
  auto put = [&](Group g, const Alts& alts) {
    for (const auto& a : alts) groups[g].push_back(GlueAlt{a.s, a.n, a.needs_entity, 0});
  };
  put(G_START, prefixed("{", opening[0]));
  if (has[0]) {
    put(G_TEXT_END, {{"\",\"", N_TYPE, false}});
    Alts te{{"\"],[\"", N_TEXT, true}};
    for (auto& x : prefixed("\"]]", after[idx(0)])) te.push_back(x);
    put(G_TYPE_END, te);
  }
  if (has[1]) {
    put(G_SEG_MORE, {{"\",\"", N_SEG, false}});
    put(G_SEG_DONE, prefixed("\"]", after[idx(1)]));
  }
  if (has[2]) {
    put(G_NUM_MORE, {{",", N_NUM, false}});
    put(G_NUM_DONE, prefixed("]", after[idx(2)]));
  }
  if (has[3]) put(G_CAT_END, prefixed("\"", after[idx(3)]));
  if (has[4]) put(G_INTENT_END, prefixed("\"", after[idx(4)]));

  // decided_at: the length of the shortest prefix that no sibling shares; alternatives must
  // be prefix-free (none is a prefix of another) so that the end of a literal is unambiguous.
  for (auto& g : groups) {
    if (g.size() > 8) throw std::logic_error("too many glue alternatives");
    for (size_t a = 0; a < g.size(); ++a) {
      size_t d = 0;
      for (size_t b = 0; b < g.size(); ++b) {
        if (a == b) continue;
        const auto &x = g[a].bytes, &y = g[b].bytes;
        size_t k = 0;
        while (k < x.size() && k < y.size() && x[k] == y[k]) ++k;
        if (k == x.size() || k == y.size()) throw std::logic_error("glue alternatives not prefix-free");
        d = std::max(d, k + 1);
      }
      g[a].decided_at = static_cast<int>(d);
    }
  }
}

}  // namespace qpfast
