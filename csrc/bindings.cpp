// pybind11 module qpfast._C: thin bindings over the C++ core (no torch headers here).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "parser.h"
#include "schema.h"

namespace py = pybind11;
using namespace qpfast;

void bind_matcher(py::module_& m);  // matcher_bindings.cpp

namespace {

py::object parse_py(const py::bytes& text, const py::bytes& normalized, const CompiledSchema& schema, bool strict) {
  std::string t = text, q = normalized;
  ParseResult r;
  {
    py::gil_scoped_release nogil;
    r = strict ? parse_strict(t, q, schema) : parse_lenient(t, q, schema);
  }
  py::dict d;
  d["ok"] = r.ok;
  d["error"] = r.error.empty() ? py::object(py::none()) : py::object(py::str(r.error));
  d["err_byte"] = r.err_byte;
  d["err_code"] = r.err_code;
  py::list ents, terms;
  for (const auto& e : r.entities) ents.append(py::make_tuple(py::str(e.text), py::str(e.type), e.start, e.end));
  for (const auto& t2 : r.terms)
    terms.append(py::make_tuple(py::str(t2.text), t2.weight < 0 ? py::object(py::none()) : py::object(py::int_(t2.weight)),
                                t2.start, t2.end));
  d["entities"] = ents;
  d["terms"] = terms;
  d["cat"] = r.has_cat ? py::object(py::str(r.cat)) : py::object(py::none());
  d["intent"] = r.has_intent ? py::object(py::str(r.intent)) : py::object(py::none());
  return std::move(d);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "qpfast C++ core: qp-json/1 parser and query-grounded constrained decoder";

  py::class_<CompiledSchema, std::shared_ptr<CompiledSchema>>(m, "CompiledSchema")
      .def(py::init([](std::vector<std::string> fields, std::vector<std::string> keys,
                       std::vector<std::string> entity_types, int weight_levels,
                       std::vector<std::string> categories, int intent_max_chars, int max_query_chars,
                       bool seg_breaks_at_spaces) {
             SchemaSpec s;
             s.fields = std::move(fields);
             s.keys = std::move(keys);
             s.entity_types = std::move(entity_types);
             s.weight_levels = weight_levels;
             s.categories = std::move(categories);
             s.intent_max_chars = intent_max_chars;
             s.max_query_chars = max_query_chars;
             s.seg_breaks_at_spaces = seg_breaks_at_spaces;
             return std::make_shared<CompiledSchema>(std::move(s));
           }),
           py::arg("fields"), py::arg("keys"), py::arg("entity_types"), py::arg("weight_levels"),
           py::arg("categories"), py::arg("intent_max_chars"), py::arg("max_query_chars"),
           py::arg("seg_breaks_at_spaces") = false)
      .def("glue", [](const CompiledSchema& s) {
        py::list out;
        for (int g = 0; g < G_COUNT; ++g) {
          py::list alts;
          for (const auto& a : s.groups[g]) alts.append(py::make_tuple(py::bytes(a.bytes), static_cast<int>(a.target)));
          out.append(alts);
        }
        return out;
      }, "The literal alternatives of each glue group (for inspection and tests).");

  m.def("parse", &parse_py, py::arg("text"), py::arg("normalized"), py::arg("schema"), py::arg("strict") = true,
        "Parse UTF-8 `text` against the normalized query (UTF-8 bytes). Returns a dict.");

  bind_matcher(m);
}
