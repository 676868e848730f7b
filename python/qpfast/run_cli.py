"""`qpfast run --model DIR [FILE|-]`: one query per line in, one JSON result per line out.

Each output line is `QPResult.to_dict()` as compact JSON (non-ASCII kept), in input order;
a query that cannot be processed (empty after normalization, ...) still gets its line, with
`error` set. A tqdm progress bar goes to stderr. Exit status: 0 on success, 2 on a usage
error or a missing model (with a message on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

__all__ = ["add_run_parser", "run_main"]


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the `run` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "run", help="query processing with a model: one query per line in, one JSON result per line out",
        description="Runs constrained qp-json/1 generation over queries (one per line of FILE, or stdin) "
                    "and writes one JSON result per line (QPResult.to_dict()) to stdout or --output.")
    p.add_argument("input", nargs="?", default="-", metavar="FILE|-",
                   help="queries, one per line (default: - = stdin)")
    p.add_argument("--model", default=None,
                   help="Hugging Face checkpoint directory (default: the embedded default model)")
    p.add_argument("--output", "-o", default="-", help="output JSONL file (default: - = stdout)")
    p.add_argument("--batch-size", type=int, default=None, help="queries decoded together (default: engine's)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="token budget per output, end token included (default: from the schema)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default: auto)")
    p.add_argument("--schema", default=None, help="schema JSON file (default: the model directory's qpfast_schema.json, else qpfast.DEFAULT_SCHEMA)")
    p.add_argument("--rules", default=None, help="text file of business rules added to the prompt")
    p.add_argument("--context", default=None, help="text file of context added to the prompt")
    p.add_argument("--chunk", type=int, default=1024, help="queries read and written per engine call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_main)
    return p


def _err(msg: str) -> int:
    print(f"qpfast run: error: {msg}", file=sys.stderr)
    return 2


def _read_text(path: Optional[str], what: str) -> Optional[str]:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def run_main(args: argparse.Namespace) -> int:
    """Runs `qpfast run`; returns the exit status."""
    from .schema import Schema

    for name in ("batch_size", "max_new_tokens"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            return _err(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if getattr(args, "chunk", 1024) < 1:
        return _err("--chunk must be >= 1")
    model = args.model
    if model is None:
        from .generate import default_model_dir
        try:
            model = default_model_dir()
        except FileNotFoundError as e:
            return _err(f"{e} (use --model DIR)")
    if not os.path.isdir(model):
        return _err(f"--model {model!r}: no such model directory")
    if not os.path.isfile(os.path.join(model, "config.json")):
        return _err(f"--model {model!r}: not a Hugging Face checkpoint (no config.json)")
    try:
        schema = None                           # the Engine serves the checkpoint's own schema, else the default
        if args.schema:
            with open(args.schema, encoding="utf-8") as f:
                schema = Schema.from_json(f.read())
        rules = _read_text(getattr(args, "rules", None), "rules")
        context = _read_text(getattr(args, "context", None), "context")
    except (OSError, ValueError, TypeError) as e:
        return _err(str(e))

    if args.input == "-":
        inp = sys.stdin
        close_in = False
    else:
        try:
            inp = open(args.input, encoding="utf-8")
        except OSError as e:
            return _err(f"{args.input}: {e.strerror or e}")
        close_in = True
    try:
        lines = [line.rstrip("\r\n") for line in inp]
    finally:
        if close_in:
            inp.close()

    from .engine import Engine
    try:
        engine = Engine(model, schema=schema, device=args.device, dtype=args.dtype)
    except (OSError, ValueError, TypeError) as e:
        return _err(f"cannot load --model {model!r}: {e}")

    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=len(lines), unit="q", file=sys.stderr, dynamic_ncols=True, desc="qpfast run")
    try:
        for i in range(0, len(lines), args.chunk):
            chunk = lines[i:i + args.chunk]
            results = engine.generate(chunk, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                      rules=rules, context=context,
                                      progress=(bar.update if bar is not None else None))
            for r in results:
                out.write(json.dumps(r.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n")
            out.flush()
    except BrokenPipeError:  # e.g. `| head`
        return 0
    finally:
        if bar is not None:
            bar.close()
        if out is not sys.stdout:
            out.close()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Stand-alone entry (`python -m qpfast.run_cli`), until cli.py wires `run` in."""
    parser = argparse.ArgumentParser(prog="qpfast")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
