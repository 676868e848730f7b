// Bindings for Vocab, Grammar, Matcher and the batched mask fill (buffers cross as the
// buffer protocol: int32, [rows, ceil(vocab_size/32)], rows contiguous).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <stdexcept>
#include <unordered_set>
#include <thread>
#include <tuple>

#include "advance.h"
#include "grammar.h"
#include "mask_rows.h"
#include "matcher.h"
#include "vocab.h"
#include "walk.h"

namespace py = pybind11;
using namespace qpfast;

namespace {

// Checks a bitmask buffer and returns (base pointer, rows, row stride in words).
uint32_t* check_mask(const py::buffer& buf, int words, int64_t& rows, int64_t& stride, const char* name,
                     bool writable = true) {
  py::buffer_info info = buf.request(writable);
  if (writable && info.readonly) throw py::value_error(std::string(name) + ": buffer is read-only");
  if (info.itemsize != 4 || (info.format != "i" && info.format != "I" && info.format != "l" && info.format != "=i" &&
                              info.format != "<i" && info.format != "=I" && info.format != "<I"))
    throw py::type_error(std::string(name) + ": expected an int32 buffer, got format '" + info.format + "'");
  if (info.ndim == 1) {
    rows = 1;
    stride = words;
    if (info.shape[0] != words) goto bad_shape;
    if (info.strides[0] != 4) throw py::value_error(std::string(name) + ": must be contiguous");
  } else if (info.ndim == 2) {
    rows = info.shape[0];
    if (info.shape[1] != words) goto bad_shape;
    if (info.strides[1] != 4 || info.strides[0] % 4 != 0 || info.strides[0] < 4 * words)
      throw py::value_error(std::string(name) + ": rows must be contiguous int32 (C order)");
    stride = info.strides[0] / 4;
  } else {
    goto bad_shape;
  }
  return static_cast<uint32_t*>(info.ptr);
bad_shape:
  std::string shape;
  for (auto s : info.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(s);
  throw py::value_error(std::string(name) + ": expected shape [rows, " + std::to_string(words) + "] (ceil(vocab_size/32) int32 words a row), got [" + shape + "]");
}

}  // namespace

void bind_matcher(py::module_& m) {
  py::class_<Vocab, std::shared_ptr<Vocab>>(m, "Vocab")
      .def(py::init([](const std::vector<py::bytes>& toks, std::vector<uint8_t> special, std::vector<int> end_ids,
                       int vocab_size, bool prefix_space) {
             std::vector<std::string> b;
             b.reserve(toks.size());
             for (const auto& t : toks) b.emplace_back(t);
             py::gil_scoped_release nogil;
             return std::make_shared<Vocab>(std::move(b), std::move(special), std::move(end_ids), vocab_size, prefix_space);
           }),
           py::arg("token_bytes"), py::arg("special"), py::arg("end_ids"), py::arg("vocab_size"), py::arg("prefix_space"))
      .def_static("from_pieces", [](const std::vector<std::string>& pieces, const std::vector<int>& ids,
                                    const std::string& mode, const std::vector<std::tuple<int, py::bytes, bool>>& added,
                                    int n, std::vector<int> end_ids, int vocab_size, bool prefix_space) {
        // A tokenizer's vocabulary straight from its token strings: decoded and indexed here.
        if (pieces.size() != ids.size()) throw py::value_error("pieces: one id per piece");
        std::vector<std::tuple<int, std::string, bool>> extra;
        for (const auto& a : added) extra.emplace_back(std::get<0>(a), std::string(std::get<1>(a)), std::get<2>(a));
        py::gil_scoped_release nogil;
        std::vector<std::string> decoded = decode_pieces(pieces, mode);
        std::vector<std::string> bytes(n);
        std::vector<uint8_t> special(n, 1);
        for (size_t k = 0; k < ids.size(); ++k) {
          if (ids[k] < 0 || ids[k] >= n) continue;
          bytes[ids[k]] = std::move(decoded[k]);
          special[ids[k]] = 0;
        }
        for (auto& a : extra) {
          int id = std::get<0>(a);
          if (id < 0 || id >= n) continue;
          bytes[id] = std::move(std::get<1>(a));
          special[id] = std::get<2>(a) ? 1 : 0;
        }
        for (int id : end_ids) if (id >= 0 && id < n) special[id] = 1;
        return std::make_shared<Vocab>(std::move(bytes), std::move(special), std::move(end_ids), vocab_size, prefix_space);
      }, py::arg("pieces"), py::arg("ids"), py::arg("mode"), py::arg("added"), py::arg("n"), py::arg("end_ids"),
         py::arg("vocab_size"), py::arg("prefix_space"))
      .def("all_token_bytes", [](const Vocab& v) {
        py::list out(v.num_tokens());
        for (int i = 0; i < v.num_tokens(); ++i) out[i] = py::bytes(v.bytes(i));
        return out;
      })
      .def("special_flags", [](const Vocab& v) {
        py::list out(v.num_tokens());
        for (int i = 0; i < v.num_tokens(); ++i) out[i] = py::bool_(v.special(i));
        return out;
      })
      .def_property_readonly("vocab_size", &Vocab::size)
      .def_property_readonly("num_tokens", &Vocab::num_tokens)
      .def_property_readonly("words", &Vocab::words)
      .def_property_readonly("end_ids", &Vocab::end_ids)
      .def_property_readonly("prefix_space", &Vocab::prefix_space)
      .def("token_bytes", [](const Vocab& v, int id) {
        if (id < 0 || id >= v.num_tokens()) throw py::index_error("token id out of range");
        return py::bytes(v.bytes(id));
      })
      .def("is_special", &Vocab::special);

  m.def("decode_pieces", [](const std::vector<std::string>& pieces, const std::string& mode) {
    std::vector<std::string> out;
    {
      py::gil_scoped_release nogil;
      out = decode_pieces(pieces, mode);
    }
    py::list res(out.size());
    for (size_t i = 0; i < out.size(); ++i) res[i] = py::bytes(out[i]);
    return res;
  }, py::arg("pieces"), py::arg("mode"), "Token strings -> token bytes (modes: byte_level, sentencepiece, raw).");

  py::class_<CoreSpec>(m, "CoreSpec")
      .def(py::init([](int g, int a, std::vector<std::array<int, 3>> spans) { return CoreSpec{g, a, std::move(spans)}; }));

  py::class_<Grammar, std::shared_ptr<Grammar>>(m, "Grammar")
      .def(py::init([](std::shared_ptr<Vocab> v, const CompiledSchema& s, const std::vector<CoreSpec>& cores) {
             return std::make_shared<Grammar>(std::move(v), s, cores);
           }),
           py::arg("vocab"), py::arg("schema"), py::arg("cores"))
      .def("literals", [](const Grammar& g) {
        py::list out;
        for (int gi = 0; gi < G_COUNT; ++gi) {
          py::list alts;
          for (const auto& a : g.schema().groups[gi]) alts.append(py::bytes(a.bytes));
          out.append(alts);
        }
        return out;
      })
      .def("core", [](const Grammar& g, int gi, int a) {
        const Core& c = g.core(gi, a);
        py::list toks;
        for (int p = c.cs; p < c.ce; ++p) if (c.token_at[p] >= 0) toks.append(c.token_at[p]);
        return py::make_tuple(c.cs, c.ce, toks);
      });

  py::class_<Matcher, std::shared_ptr<Matcher>>(m, "Matcher")
      .def(py::init([](std::shared_ptr<Grammar> g, const py::bytes& normalized, int max_tokens) {
             std::string q = normalized;
             return std::make_shared<Matcher>(std::move(g), q, max_tokens);
           }),
           py::arg("grammar"), py::arg("normalized"), py::arg("max_tokens") = -1)
      .def("fill_bitmask", [](const Matcher& mt, const py::buffer& buf, int64_t row, int words) {
        int64_t rows, stride;
        uint32_t* base = check_mask(buf, words, rows, stride, "bitmask");
        if (row < 0 || row >= rows) throw py::index_error("row: " + std::to_string(row) + " out of range for " + std::to_string(rows) + " rows");
        py::gil_scoped_release nogil;
        mt.fill_bitmask(base + row * stride);
      }, py::arg("bitmask"), py::arg("row"), py::arg("words"))
      .def("accept", &Matcher::accept)
      .def("rollback", &Matcher::rollback)
      .def("forced_tokens", &Matcher::forced_tokens)
      .def("is_finished", &Matcher::is_finished)
      .def("is_complete", &Matcher::is_complete)
      .def("remaining_min_tokens", &Matcher::remaining_min_tokens)
      .def_property_readonly("num_tokens", &Matcher::num_tokens)
      .def_property_readonly("max_tokens", &Matcher::max_tokens)
      .def("text_bytes", [](const Matcher& mt) { return py::bytes(mt.text()); });

  m.def("random_walks", [](std::shared_ptr<Grammar> g, const std::vector<py::bytes>& normalized, std::vector<int> max_tokens,
                           uint64_t seed, double bias_end) {
    std::vector<std::string> qs;
    for (const auto& q : normalized) qs.emplace_back(q);
    std::vector<WalkResult> rs;
    {
      py::gil_scoped_release nogil;
      rs = random_walks(std::move(g), qs, max_tokens, seed, bias_end);
    }
    py::list out;
    for (const auto& r : rs) out.append(py::make_tuple(py::bytes(r.text), r.tokens, r.forced, r.error));
    return out;
  }, py::arg("grammar"), py::arg("normalized"), py::arg("max_tokens"), py::arg("seed") = 0, py::arg("bias_end") = 0.3,
     "Fuzzing aid: one random walk per query through the matcher, checking the mask against accept(),\n"
     "forced tokens, rollback and the budget. Returns [(text, tokens, forced_steps, error)].");

  m.def("fill_bitmasks", [](const std::vector<std::shared_ptr<Matcher>>& ms, const py::buffer& buf, int words, int nthreads) {
    int64_t rows, stride;
    uint32_t* base = check_mask(buf, words, rows, stride, "bitmask");
    if (static_cast<int64_t>(ms.size()) > rows)
      throw py::value_error("bitmask: " + std::to_string(rows) + " rows for " + std::to_string(ms.size()) + " matchers");
    std::vector<const Matcher*> ptrs;
    for (const auto& p : ms) {
      if (!p) throw py::type_error("matchers: None is not a matcher");
      if (p->words() != words) throw py::value_error("matchers: a matcher's bitmask rows have " + std::to_string(p->words()) + " words, the bitmask " + std::to_string(words));
      ptrs.push_back(p.get());
    }
    py::gil_scoped_release nogil;
    fill_bitmasks(ptrs, base, stride, nthreads);
  }, py::arg("matchers"), py::arg("bitmask"), py::arg("words"), py::arg("nthreads") = 1);

  m.def("advance_rows", [](const std::vector<std::shared_ptr<Matcher>>& ms, const std::vector<int64_t>& picks,
                           const std::vector<int64_t>& slots, const py::buffer& buf, int words, bool jump_forward,
                           bool fill, int nthreads) {
    int64_t rows, stride;
    uint32_t* base = check_mask(buf, words, rows, stride, "bitmask");
    const size_t n = ms.size();
    if (picks.size() != n) throw py::value_error("picks: expected one per matcher (" + std::to_string(n) + "), got " + std::to_string(picks.size()));
    if (slots.size() != n) throw py::value_error("slots: expected one per matcher (" + std::to_string(n) + "), got " + std::to_string(slots.size()));
    std::vector<AdvanceRow> todo(n);
    std::vector<bool> used(static_cast<size_t>(rows), false);
    std::unordered_set<const Matcher*> seen;
    for (size_t i = 0; i < n; ++i) {
      if (!ms[i]) throw py::type_error("matchers: None is not a matcher");
      if (ms[i]->words() != words) throw py::value_error("matchers: a matcher's bitmask rows have " + std::to_string(ms[i]->words()) + " words, the bitmask " + std::to_string(words));
      if (!seen.insert(ms[i].get()).second) throw py::value_error("matchers: the same matcher appears twice");
      if (slots[i] < 0 || slots[i] >= rows) throw py::index_error("slots: " + std::to_string(slots[i]) + " out of range for " + std::to_string(rows) + " bitmask rows");
      if (used[slots[i]]) throw py::value_error("slots: row " + std::to_string(slots[i]) + " appears twice");
      used[slots[i]] = true;
      if (picks[i] < -1 || picks[i] > INT_MAX) throw py::value_error("picks: " + std::to_string(picks[i]) + " is neither a token id nor -1");
      todo[i] = AdvanceRow{ms[i].get(), picks[i], slots[i]};
    }
    std::vector<AdvanceResult> res;
    std::vector<std::vector<int>> toks;
    {
      py::gil_scoped_release nogil;
      advance_rows(todo, base, stride, words, jump_forward, fill, nthreads, res, toks);
    }
    std::vector<int64_t> rejected(n);
    std::vector<bool> filled(n);
    for (size_t i = 0; i < n; ++i) {
      rejected[i] = res[i].rejected;
      filled[i] = res[i].filled;
    }
    return py::make_tuple(toks, rejected, filled);
  }, py::arg("matchers"), py::arg("picks"), py::arg("slots"), py::arg("bitmask"), py::arg("words"),
     py::arg("jump_forward") = true, py::arg("fill") = true, py::arg("nthreads") = 1,
     "One engine step's host work for rows: accept picks[i] (-1: none), the forced tokens, fill bitmask row\n"
     "slots[i] (unless fill is false: then stop), and while it allows one token take it. Returns (tokens per row, rejected token or -1, filled).");

  m.def("mask_rows", [](const py::buffer& buf, int words, int k, const py::buffer& counts_buf, const py::buffer& ids_buf) {
    int64_t rows, stride;
    const uint32_t* base = check_mask(buf, words, rows, stride, "bitmask", false);
    if (k < 0) throw py::value_error("k: must be >= 0, got " + std::to_string(k));
    py::buffer_info c = counts_buf.request(true), ids = ids_buf.request(true);
    auto int64_out = [&](const py::buffer_info& b, int64_t n, const char* name) {
      if (b.readonly || b.itemsize != 8 || (b.format != "l" && b.format != "q" && b.format != "=q" && b.format != "<q" &&
                                            b.format != "=l" && b.format != "<l"))
        throw py::type_error(std::string(name) + ": expected a writable int64 buffer");
      if (b.size != n) throw py::value_error(std::string(name) + ": expected " + std::to_string(n) + " elements, got " +
                                             std::to_string(b.size));
      if (b.ndim >= 1 && b.strides[b.ndim - 1] != 8) throw py::value_error(std::string(name) + ": must be contiguous");
      if (b.ndim == 2 && b.strides[0] != 8 * b.shape[1]) throw py::value_error(std::string(name) + ": must be contiguous");
    };
    int64_out(c, rows, "counts");
    int64_out(ids, rows * k, "ids");
    py::gil_scoped_release nogil;
    mask_rows(base, rows, stride, words, k, static_cast<int64_t*>(c.ptr), static_cast<int64_t*>(ids.ptr));
  }, py::arg("bitmask"), py::arg("words"), py::arg("k"), py::arg("counts"), py::arg("ids"),
     "Per bitmask row: counts[r] = allowed tokens; ids[r] = their ids ascending (padded -1) when at most k.");
}
