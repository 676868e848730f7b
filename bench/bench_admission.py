"""Admission order: more queries than the batch holds, in the caller's order against longest
first (`Engine(..., admission=...)`), with the shipped default model on CPU, greedy.

    python bench/bench_admission.py [--queries 256] [--batch-size 64] [--graph-step] [--speculate auto] [--reps 1]

A fixed batch's steps run until its longest row ends, and each step costs about the same
however few rows are left in it (on a GPU it reads all the weights once). So when the long
queries happen to enter last, the call ends with a tail of near-empty steps. The queries
are `QueryGenerator("test")`'s, shuffled with `--seed`. Per order: wall seconds (fastest of
`--reps`), decode passes, prefill passes and row passes, and `row passes / batch size` as the
floor on the passes (decode and prefill) that no order can beat. Every run checks that each
query's tokens are the same in both orders. `--graph-step` runs the CUDA-graph step (bucketed, at most 8 tokens a row a step)
eagerly on the CPU, so the passes are those a GPU would run.
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--graph-step", action="store_true", help="the CUDA-graph step, run eagerly on the CPU")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speculate", default="auto", help="the engines' setting ('auto' or an int)")
    ap.add_argument("--model", default=None, help="a checkpoint directory (default: the shipped default model)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from qpfast.data import QueryGenerator
    from qpfast.engine import Engine
    from qpfast.generate import default_model_dir

    queries = [ex.query for ex in QueryGenerator("test").examples(args.queries, seed=args.seed)]
    random.Random(args.seed).shuffle(queries)
    eng = Engine(args.model or default_model_dir(), device="cpu", dtype="float32",
                 cuda_graphs=True if args.graph_step else "auto",
                 speculate=args.speculate if args.speculate == "auto" else int(args.speculate))
    eng.generate(queries[:8], batch_size=8)          # warm-up: prefix, cache, first calls
    rows, ids = [], {}
    for order in ("in_order", "longest_first"):
        eng.admission = order
        best = None
        for _ in range(args.reps):
            t0 = time.perf_counter()
            eng.generate(queries, batch_size=args.batch_size)
            wall = time.perf_counter() - t0
            best = wall if best is None else min(best, wall)
        st = eng.last_stats
        ids[order] = list(eng.last_token_ids)
        rows.append(dict(admission=order, wall_s=best, decode_passes=st["decode_forward_passes"],
                         prefill_passes=st["prefill_forward_passes"], row_passes=st["row_forward_passes"],
                         output_tokens=st["output_tokens"], floor_passes=st["row_forward_passes"] / args.batch_size))
    same = ids["in_order"] == ids["longest_first"]
    print(f"{args.queries} queries, batch {args.batch_size}, {'graph step' if args.graph_step else 'eager step'}"
          f" on CPU, speculate={args.speculate}, {torch.get_num_threads()} threads; same tokens in both orders: {same}")
    for r in rows:
        print(f"  {r['admission']:>13}: {r['wall_s']:.2f} s, {r['decode_passes']} decode + {r['prefill_passes']}"
              f" prefill passes, {r['row_passes']} row passes (floor {r['floor_passes']:.0f} passes in all),"
              f" {r['output_tokens']} tokens")
    a, b = rows
    print(f"  longest first: {a['decode_passes'] / b['decode_passes']:.2f}x fewer decode passes,"
          f" {a['wall_s'] / b['wall_s']:.2f}x the speed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(queries=args.queries, batch_size=args.batch_size, graph_step=args.graph_step,
                           speculate=args.speculate,
                           same_tokens=same, rows=rows), f, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
