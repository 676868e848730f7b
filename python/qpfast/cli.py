"""The ``qpfast`` command line (``qpfast SUBCOMMAND ...`` or ``python -m qpfast ...``).

Subcommands:

- ``qpfast eval --data FILE (--model DIR | --legacy) [--json OUT] [--predictions OUT.jsonl]``:
  score a predictor on a ``{"query", "target"}`` JSONL file (DESIGN.md §6), print one table.
- ``qpfast data --out DIR [--n 100000] [--dev 2000] [--test 2000] [--seed 0]``: write the
  generated train / dev / test JSONL files (and an unlabelled stage-1 stream).
- ``qpfast run --model DIR [FILE|-]``: one query a line in, one JSON result a line out.
- ``qpfast demo``: the format and constrained generation on example queries.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments
and sets ``func`` to ``_cmd_<name>(args) -> int``. To add a subcommand (``run``, owned by
the engine), write that pair and list ``_add_<name>`` in `SUBCOMMANDS`.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Sequence


# ---------------------------------------------------------------------------------------
# qpfast eval
# ---------------------------------------------------------------------------------------
def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a model or the legacy pipeline on a data file",
                       description="Score predictions on a {\"query\", \"target\"} JSONL file "
                                   "(metrics of DESIGN.md §6) and print one table.")
    p.add_argument("--data", required=True, metavar="FILE", help="JSONL data file with query and target")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", metavar="DIR", help="checkpoint served by qpfast.Engine")
    who.add_argument("--legacy", action="store_true", help="the legacy jieba + gazetteer pipeline")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.add_argument("--predictions", metavar="OUT.jsonl", help='write {"query", "output"} lines')
    p.add_argument("--limit", type=int, metavar="N", help="only the first N records")
    p.add_argument("--legacy-gazetteer", choices=("train", "all"), default="train",
                   help="values the legacy pipeline knows: the train split's (default) or all")
    p.add_argument("--split-seed", type=int, default=0,
                   help="partition seed the data was generated with (legacy gazetteer), default 0")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from . import evaluate as ev
    if args.limit is not None and args.limit <= 0:
        raise SystemExit("qpfast eval: --limit must be positive")
    if args.legacy:
        predictor, name = ev.legacy_predictor(args.legacy_gazetteer, args.split_seed), "legacy"
    else:
        try:
            predictor, name = ev.model_predictor(args.model), f"model {args.model}"
        except RuntimeError as e:
            print(f"qpfast eval: {e}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    rep = ev.run_eval(args.data, predictor, limit=args.limit, predictions_path=args.predictions)
    elapsed = time.perf_counter() - t0
    print(ev.format_table(rep, f"qpfast eval  data={args.data}  predictor={name}  ({elapsed:.1f} s)"))
    if args.json:
        ev.write_report(rep, args.json)
    return 0


# ---------------------------------------------------------------------------------------
# qpfast data
# ---------------------------------------------------------------------------------------
def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate labelled train/dev/test JSONL files",
                       description="Generate Xiaohongshu-style queries with gold qp-json/1 targets; "
                                   "dev and test use entity values and templates unseen in train.")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--n", type=int, default=100_000, help="train examples (default 100000)")
    p.add_argument("--dev", type=int, default=2000, help="dev examples (default 2000)")
    p.add_argument("--test", type=int, default=2000, help="test examples (default 2000)")
    p.add_argument("--unlabelled", type=int, default=0, metavar="N",
                   help="also write N unlabelled, perturbed stage-1 queries (unlabelled.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--split-seed", type=int, default=0, help="train/dev/test partition seed (default 0)")
    p.set_defaults(func=_cmd_data)


def _cmd_data(args: argparse.Namespace) -> int:
    from .data import write_splits
    for name in ("n", "dev", "test", "unlabelled"):
        if getattr(args, name) < 0:
            raise SystemExit(f"qpfast data: --{name} must be >= 0")
    t0 = time.perf_counter()
    paths = write_splits(args.out, args.n, args.dev, args.test, seed=args.seed, split_seed=args.split_seed,
                         n_unlabelled=args.unlabelled)
    for split, path in paths.items():
        print(f"{split:<10} {path}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------
# qpfast run / qpfast demo
# ---------------------------------------------------------------------------------------
def _add_run(sub: argparse._SubParsersAction) -> None:
    from .run_cli import add_run_parser
    add_run_parser(sub)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show the format and constrained generation on example queries")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.set_defaults(func=lambda args: __import__("qpfast.demo", fromlist=["main"]).main(args.max_new_tokens))


#: Subcommand declarations, in help order.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_run, _add_eval, _add_data, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    """The ``qpfast`` argument parser with every subcommand in `SUBCOMMANDS`."""
    from . import __version__
    parser = argparse.ArgumentParser(prog="qpfast", description="qpfast: fast, query-grounded QP generation")
    parser.add_argument("--version", action="version", version=f"qpfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qpfast`` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
