"""``python -m qpfast.train --config FILE [--out DIR] [--stages ...]``: the training recipe."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a shared or busy
# 2-core machine spinning threads fight each other (measured: 2-3x slower steps); on an
# idle one the difference is small.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_parser() -> argparse.ArgumentParser:
    from .recipe import STAGES
    p = argparse.ArgumentParser(
        prog="python -m qpfast.train",
        description="Build qpfast's default QP model from scratch: generated data, own tokenizer, stage 1 "
                    "(SFT on legacy pseudo-labels + gold), stage 2 (SFT on gold), stage 3 (multi-reward GRPO "
                    "with constrained rollouts), each stage evaluated with qpfast eval.")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="recipe config (TOML or JSON), or a checked-in name: default, tiny")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<config name>)")
    p.add_argument("--stages", metavar="LIST", default="all",
                   help=f"comma-separated stages to run, in order: {','.join(STAGES)} (or 1,2,3; default all). "
                        "Later stages read what earlier ones wrote in --out.")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads (overrides the config's threads)")
    p.add_argument("--seed", type=int, help="overrides the config's seed")
    p.add_argument("--export-to", metavar="DIR",
                   help="after stage 3, also copy the exported model there (e.g. python/qpfast/models/default)")
    p.add_argument("--no-export", action="store_true",
                   help="the branch stage trains and evaluates only (how soup.parallel runs the branch)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import RecipeConfig, config_path
    from .recipe import parse_stages, run_recipe

    try:
        path = config_path(args.config)
        cfg = RecipeConfig.load(path)
        stages = parse_stages(args.stages)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"python -m qpfast.train: {e}", file=sys.stderr)
        return 2
    if args.threads is not None:
        cfg.threads = args.threads
    if args.seed is not None:
        cfg.seed = args.seed
    out = args.out or f"runs/{path.stem}"
    m = run_recipe(cfg, out, stages, export_to=args.export_to, export=not args.no_export)
    from .card import metrics_table
    print(metrics_table(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
