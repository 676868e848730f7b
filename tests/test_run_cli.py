"""`qpfast run`: one query per line in, one JSON result per line out."""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys

import pytest

import qpfast
from qpfast.generate import clear_engines
from qpfast.run_cli import add_run_parser, run_main

from test_engine_support import llama_dir, torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


def _args(argv):
    parser = argparse.ArgumentParser(prog="qpfast")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_parser(sub)
    return parser.parse_args(["run"] + argv)


def test_run_file_to_stdout(tmp_path, capsys):
    queries = ["兰蔻小黑瓶适合什么肤质", "", 'say "hi" \\ 😀', "周末 上海 去哪玩"]
    f = tmp_path / "q.txt"
    f.write_text("\n".join(queries) + "\n", encoding="utf-8")
    args = _args(["--model", llama_dir(), str(f), "--batch-size", "2", "--max-new-tokens", "200",
                  "--device", "cpu"])
    assert args.func is run_main
    assert run_main(args) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert len(lines) == len(queries)
    for q, line in zip(queries, lines):
        d = json.loads(line)
        assert d["query"] == q
        if q:
            assert d["error"] is None
            assert qpfast.parse(d["raw"], q, strict=True).to_dict() == d
        else:
            assert "empty" in d["error"]
    assert "qpfast run" in cap.err            # the progress bar


def test_run_stdin_to_output_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("x\n兰蔻\n"))
    out = tmp_path / "out.jsonl"
    assert run_main(_args(["--model", llama_dir(), "-", "-o", str(out), "--no-progress",
                           "--max-new-tokens", "160", "--device", "cpu"])) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["query"] for r in rows] == ["x", "兰蔻"] and all(r["error"] is None for r in rows)
    assert capsys.readouterr().out == ""


def test_without_model_runs_the_embedded_default(tmp_path, capsys):
    f = tmp_path / "q.txt"
    f.write_text("兰蔻小黑瓶\n", encoding="utf-8")
    try:
        assert run_main(_args([str(f), "--no-progress", "--device", "cpu"])) == 0
    finally:
        clear_engines()
    row = json.loads(capsys.readouterr().out)
    assert row["query"] == "兰蔻小黑瓶" and row["error"] is None
    qpfast.parse(row["raw"], row["query"], strict=True)


def test_missing_model_exits_non_zero_with_a_message(tmp_path, capsys, monkeypatch):
    f = tmp_path / "q.txt"
    f.write_text("q\n", encoding="utf-8")
    assert run_main(_args(["--model", str(tmp_path / "nope"), str(f)])) != 0
    assert "nope" in capsys.readouterr().err
    monkeypatch.setattr(sys.modules["qpfast.generate"], "DEFAULT_MODEL_DIR", tmp_path / "no-default")
    assert run_main(_args([str(f)])) != 0                  # no --model and a broken install
    assert "--model" in capsys.readouterr().err
    assert run_main(_args(["--model", str(tmp_path), str(f)])) != 0   # not a checkpoint
    assert "config.json" in capsys.readouterr().err
    assert run_main(_args(["--model", llama_dir(), str(tmp_path / "missing.txt")])) != 0
    assert run_main(_args(["--model", llama_dir(), str(f), "--batch-size", "0"])) != 0


def test_run_as_a_process():
    code = "import sys; from qpfast.run_cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, "run", "--model", "/nonexistent/dir", "-"], input="q\n",
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "no such model directory" in p.stderr


def test_run_serves_the_checkpoint_schema_unless_told_otherwise(tmp_path, capsys):
    import shutil

    from qpfast.schema import save_model_schema
    d = tmp_path / "ckpt"
    shutil.copytree(llama_dir(), d)
    own = qpfast.Schema(fields=("seg", "weight"), weight_levels=2, seg_breaks_at_spaces=True)
    save_model_schema(own, d)
    f = tmp_path / "q.txt"
    f.write_text("兰蔻 小黑瓶\na b c\n", encoding="utf-8")
    base = ["--model", str(d), str(f), "--no-progress", "--max-new-tokens", "120", "--device", "cpu"]
    assert run_main(_args(base)) == 0
    for line in capsys.readouterr().out.splitlines():
        row = json.loads(line)
        assert list(json.loads(row["raw"])) == ["seg", "weight"], row["raw"]   # the checkpoint's schema
        assert qpfast.parse(row["raw"], row["query"], own).to_dict() == row
    given = tmp_path / "schema.json"
    given.write_text(qpfast.Schema(fields=("cat",)).to_json(), encoding="utf-8")
    assert run_main(_args(base + ["--schema", str(given)])) == 0          # --schema wins
    assert all(list(json.loads(json.loads(x)["raw"])) == ["cat"] for x in capsys.readouterr().out.splitlines())
