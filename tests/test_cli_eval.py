"""Tests of ``qpfast eval`` and ``qpfast data`` (`qpfast.cli`)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import qpfast
from qpfast import cli, evaluate
from qpfast.evaluate import REPORT_KEYS

from bench_scripts import bench_module

RECORDS = [
    ("兰蔻小黑瓶适合什么肤质", {"ner": [["兰蔻", "品牌"], ["小黑瓶", "产品"]], "seg": ["兰蔻", "小黑瓶", "适合", "什么", "肤质"],
                          "weight": [3, 3, 1, 0, 2], "cat": "美妆>护肤", "intent": "想了解兰蔻小黑瓶适合的肤质"}),
    ("成都 周末 攻略", {"ner": [["成都", "地点"], ["周末", "时间"]], "seg": ["成都", "周末", "攻略"], "weight": [3, 1, 2],
                   "cat": "旅行>国内", "intent": "寻找成都周末旅游攻略"}),
    ("狗狗拉肚子怎么办", {"ner": [], "seg": ["狗狗", "拉肚子", "怎么办"], "weight": [2, 2, 0], "cat": "宠物>狗",
                   "intent": "解决狗狗拉肚子的问题"}),
]


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for q, d in RECORDS:
            f.write(json.dumps({"query": q, "target": qpfast.render(d, query=q)}, ensure_ascii=False) + "\n")
    return path


def test_eval_legacy_table_json_and_predictions(data_file, tmp_path, capsys):
    out_json, out_pred = tmp_path / "rep.json", tmp_path / "pred.jsonl"
    rc = cli.main(["eval", "--data", str(data_file), "--legacy", "--json", str(out_json),
                   "--predictions", str(out_pred)])
    assert rc == 0
    table = capsys.readouterr().out
    for label in ("seg F1", "NER F1", "weight F1", "category acc", "intent char F1", "overall", "invalid"):
        assert label in table
    rep = json.loads(out_json.read_text(encoding="utf-8"))
    assert list(rep) == list(REPORT_KEYS) and rep["n"] == 3 and rep["invalid_rate"] == 0.0
    preds = [json.loads(line) for line in out_pred.read_text(encoding="utf-8").splitlines()]
    assert [p["query"] for p in preds] == [q for q, _ in RECORDS]
    assert all(set(p) == {"query", "output"} for p in preds)
    for p in preds:
        qpfast.parse(p["output"], p["query"], strict=True)
    # the JSON matches the library's evaluation of the written predictions
    golds = [qpfast.render(d, query=q) for q, d in RECORDS]
    again = evaluate.evaluate([p["query"] for p in preds], golds, [p["output"] for p in preds])
    assert again == rep
    # ... and reads back as query -> output
    assert evaluate.load_predictions(out_pred) == {p["query"]: p["output"] for p in preds}


def test_load_predictions_names_the_bad_line(tmp_path):
    path = tmp_path / "pred.jsonl"
    path.write_text('{"query": "a", "output": "{}"}\n{"query": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"pred\.jsonl:2: expected"):
        evaluate.load_predictions(path)


def test_category_breakdown_of_the_legacy_pipeline_matches_legacy(data_file, tmp_path, capsys):
    """bench/category_breakdown.py on the legacy pipeline's own predictions: the model and legacy
    columns agree, and the classes split on the legacy keyword table."""
    mod = bench_module("category_breakdown")
    assert mod.query_class("狗狗拉肚子怎么办") == mod.KEYWORD        # 狗狗: a 宠物>狗 keyword
    assert mod.query_class("台北产检医院推荐") == mod.KEYWORDS_MIXED   # 产检: 母婴>孕产, 医院: 健康>医疗
    assert mod.query_class("成都 周末") == mod.NO_KEYWORD
    pred = tmp_path / "pred.jsonl"
    assert cli.main(["eval", "--data", str(data_file), "--legacy", "--predictions", str(pred)]) == 0
    capsys.readouterr()
    mod.main(["--data", str(data_file), "--predictions", str(pred)])
    rows = {line[:26].strip(): line[26:].split() for line in capsys.readouterr().out.splitlines()[1:5]}
    assert set(rows) == {*mod.CLASSES, "all"}
    assert rows["all"][0] == "3"
    for n, model, legacy, model_top, legacy_top in rows.values():
        assert (model, model_top) == (legacy, legacy_top)


def test_eval_model_uses_the_engine_predictor(data_file, tmp_path, monkeypatch, capsys):
    golds = {q: qpfast.render(d, query=q) for q, d in RECORDS}
    seen = {}

    def fake_model_predictor(model_dir, **kw):
        seen["dir"] = model_dir
        return lambda queries: [golds[q] if i else "garbage" for i, q in enumerate(queries)]

    monkeypatch.setattr(evaluate, "model_predictor", fake_model_predictor)
    out_json = tmp_path / "rep.json"
    assert cli.main(["eval", "--data", str(data_file), "--model", "some/dir", "--json", str(out_json)]) == 0
    rep = json.loads(out_json.read_text(encoding="utf-8"))
    assert seen["dir"] == "some/dir"
    assert rep["invalid_rate"] == pytest.approx(1 / 3) and rep["cat_acc"] == pytest.approx(2 / 3)


def test_eval_model_without_engine_fails_clearly(data_file, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "qpfast.engine", None)  # import qpfast.engine -> ImportError
    rc = cli.main(["eval", "--data", str(data_file), "--model", "nowhere"])
    assert rc == 2
    assert "qpfast.Engine" in capsys.readouterr().err


def test_eval_arguments(data_file, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--data", str(data_file)])  # needs --model or --legacy
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["eval", "--data", str(data_file), "--legacy", "--model", "x"])
    assert cli.main([]) == 2  # no subcommand: help, status 2


def test_eval_rejects_a_bad_data_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        cli.main(["eval", "--data", str(bad), "--legacy"])


def test_data_then_eval(tmp_path, capsys):
    out = tmp_path / "gen"
    assert cli.main(["data", "--out", str(out), "--n", "30", "--dev", "5", "--test", "20",
                     "--unlabelled", "10", "--seed", "3"]) == 0
    lines = {p.stem: p.read_text(encoding="utf-8").splitlines() for p in out.iterdir()}
    assert {k: len(v) for k, v in lines.items()} == {"train": 30, "dev": 5, "test": 20, "unlabelled": 10}
    rep_path = tmp_path / "rep.json"
    assert cli.main(["eval", "--data", str(out / "test.jsonl"), "--legacy", "--limit", "8",
                     "--json", str(rep_path)]) == 0
    assert json.loads(rep_path.read_text(encoding="utf-8"))["n"] == 8


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "qpfast", "eval", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--legacy" in r.stdout and "--predictions" in r.stdout
    r = subprocess.run([sys.executable, "-m", "qpfast", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and qpfast.__version__ in r.stdout


def test_paired_bootstrap_clusters_repeats_and_brackets_the_difference(tmp_path, capsys):
    """bench/paired_bootstrap.py: repeated queries (same q' after normalization) form one cluster whose
    counts add up; gold against itself is a difference of exactly 0 in every resample; gold
    against all-invalid output is a positive difference with a positive interval."""
    mod = bench_module("paired_bootstrap")
    queries = [q for q, _ in RECORDS] + ["兰蔻小黑瓶 适合什么肤质", "ＣＨＥＮＧＤＵ"]  # a repeat; a new query
    extra = {"ner": [], "seg": ["chengdu"], "weight": [3], "cat": "旅行>国内", "intent": "成都"}
    golds = [qpfast.render(d, query=q) for q, d in RECORDS] + [qpfast.render(RECORDS[0][1], query=queries[3]),
                                                            qpfast.render(extra, query=queries[4])]
    g = mod.cluster_counts(queries, golds, golds)
    assert g.shape[0] == 4  # the repeat joined its first copy
    one = mod.cluster_counts(queries[:1], golds[:1], golds[:1])[0]
    assert (g[0] == 2 * one).all()
    assert g[:, -2].tolist() == [2, 1, 1, 1]  # Counts.n per cluster
    same = mod.paired_bootstrap(g, g, n_boot=50)
    for r in same.values():
        assert r["diff"] == r["lo"] == r["hi"] == 0.0 and r["p_not_better"] == 1.0
    bad = mod.cluster_counts(queries, golds, ["garbage"] * len(queries))
    res = mod.paired_bootstrap(g, bad, n_boot=50)
    assert res["seg_f1"]["a"] == 1.0 and res["seg_f1"]["b"] == 0.0
    assert res["overall"]["lo"] > 0 and res["overall"]["p_not_better"] == 0.0
    with pytest.raises(ValueError, match="n_boot"):
        mod.paired_bootstrap(g, g, n_boot=0)
    with pytest.raises(ValueError, match="shapes differ"):
        mod.paired_bootstrap(g, g[:2])
    # the command line: predictions files against the legacy pipeline
    data = tmp_path / "d.jsonl"
    pred = tmp_path / "p.jsonl"
    with open(data, "w", encoding="utf-8") as f, open(pred, "w", encoding="utf-8") as p:
        for q, t in zip(queries, golds):
            f.write(json.dumps({"query": q, "target": t}, ensure_ascii=False) + "\n")
            p.write(json.dumps({"query": q, "output": t}, ensure_ascii=False) + "\n")
    mod.main(["--data", str(data), "--a", str(pred), "--n-boot", "20"])
    out = capsys.readouterr().out
    assert out.startswith("5 examples, 4 distinct queries, 20 resamples")
    assert "| seg_f1 | 1.0000 |" in out
    with pytest.raises(SystemExit, match="no prediction for 1 of 5"):
        pred.write_text("\n".join(pred.read_text(encoding="utf-8").splitlines()[:-1]) + "\n", encoding="utf-8")
        mod.main(["--data", str(data), "--a", str(pred)])
