"""Batches that refill: more queries than the batch holds, in the caller's order against
longest first (`Engine(..., admission=...)`), and with `--prefill-ab` the joining rows'
prefill in an eager pass against through the graph steps (`chunked_prefill`); the shipped
default model, greedy.

    python bench/bench_admission.py [--queries 256] [--batch-size 64] [--graph-step]
                                    [--prefill-ab] [--speculate auto] [--device cpu] [--reps 1]

A fixed batch's steps run until its longest row ends, and each step costs about the same
however few rows are left in it (on a GPU it reads all the weights once). So when the long
queries happen to enter last, the call ends with a tail of near-empty steps. The queries
are `QueryGenerator("test")`'s, shuffled with `--seed`. Per configuration: wall seconds
(fastest of `--reps`), decode and prefill passes, row passes, the graph steps' query
positions (padding included: what a GPU computes), and `row passes / batch size` as the
floor on the passes that no order can beat. Every run checks that each query's tokens are
the same in every configuration (exact in fp32; in bf16 a step's shape may round
differently, so the CUDA run counts the queries that match).

`--graph-step` runs the CUDA-graph step (bucketed, at most 8 tokens a row a step) eagerly
on the CPU, so the passes are those a GPU would run. `--device cuda` runs it on the GPU in
bf16, warmed up (`Engine.warmup`) before anything is timed.
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch

#: (name, admission, chunked_prefill)
CONFIGS = [("in_order", "in_order", True), ("longest_first", "longest_first", True)]
PREFILL_AB = ("longest_first/eager_prefill", "longest_first", False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--graph-step", action="store_true", help="CPU: the CUDA-graph step, run eagerly")
    ap.add_argument("--prefill-ab", action="store_true",
                    help="also longest first with the joining rows prefilled in eager passes")
    ap.add_argument("--device", default="cpu", help="cpu (fp32) or cuda (bf16, CUDA graphs)")
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

    cuda = args.device.startswith("cuda")
    queries = [ex.query for ex in QueryGenerator("test").examples(args.queries, seed=args.seed)]
    random.Random(args.seed).shuffle(queries)
    eng = Engine(args.model or default_model_dir(), device=args.device, dtype="bfloat16" if cuda else "float32",
                 cuda_graphs="auto" if cuda else (True if args.graph_step else "auto"),
                 speculate=args.speculate if args.speculate == "auto" else int(args.speculate))
    if cuda:
        eng.warmup(batch_size=args.batch_size)
    eng.generate(queries[:8], batch_size=8)          # warm-up: prefix, cache, first calls
    configs = CONFIGS + ([PREFILL_AB] if args.prefill_ab else [])
    rows, ids = [], {}
    for name, admission, chunked in configs:
        eng.admission, eng.chunked_prefill = admission, chunked
        best = None
        for _ in range(args.reps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            eng.generate(queries, batch_size=args.batch_size)
            wall = time.perf_counter() - t0
            best = wall if best is None else min(best, wall)
        st = eng.last_stats
        ids[name] = list(eng.last_token_ids)
        rows.append(dict(config=name, admission=admission, chunked_prefill=chunked, wall_s=best,
                         decode_passes=st["decode_forward_passes"], prefill_passes=st["prefill_forward_passes"],
                         row_passes=st["row_forward_passes"], graph_positions=st["graph_positions"],
                         output_tokens=st["output_tokens"], floor_passes=st["row_forward_passes"] / args.batch_size,
                         same_rows=sum(a == b for a, b in zip(ids[configs[0][0]], ids[name]))))
    same = all(r["same_rows"] == len(queries) for r in rows)
    step = "graph step" if (cuda or args.graph_step) else "eager step"
    print(f"{args.queries} queries, batch {args.batch_size}, {step} on {args.device}, speculate={args.speculate}, "
          f"{torch.get_num_threads()} threads; the same tokens in every configuration: {same}")
    for r in rows:
        print(f"  {r['config']:>27}: {r['wall_s']:.3f} s, {r['decode_passes']} decode + {r['prefill_passes']}"
              f" prefill passes, {r['row_passes']} row passes (floor {r['floor_passes']:.0f} passes in all),"
              f" {r['graph_positions']} graph positions, {r['output_tokens']} tokens,"
              f" {r['same_rows']}/{len(queries)} rows as {configs[0][0]}")
    a, b = rows[0], rows[1]
    print(f"  longest first: {a['decode_passes'] / b['decode_passes']:.2f}x fewer decode passes,"
          f" {a['wall_s'] / b['wall_s']:.2f}x the speed")
    if args.prefill_ab:
        c = rows[2]
        print(f"  chunked prefill: {(c['decode_passes'] + c['prefill_passes']) / (b['decode_passes'] + b['prefill_passes']):.2f}x"
              f" fewer passes, {c['wall_s'] / b['wall_s']:.2f}x the speed of eager prefill passes")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(queries=args.queries, batch_size=args.batch_size, graph_step=cuda or args.graph_step,
                           device=args.device, speculate=args.speculate, same_tokens=same, rows=rows), f, indent=2)
    return 0 if (same or cuda) else 1


if __name__ == "__main__":
    raise SystemExit(main())
