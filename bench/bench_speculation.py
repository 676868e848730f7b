"""Speculative drafts on CPU: the shipped default model with `speculate=0` against the
default (`"auto"`: up to 4 drafts a row at steps of at most 64 rows), same queries, greedy.

    python bench/bench_speculation.py [--reps 3] [--threads 2] [--json OUT]

Rows: one query at a time (the online QP case: median and p90 latency over 40 queries), then
batches of 4, 16, 64 and 128 queries at batch sizes 4, 16, 64 and 128 (128 rows: above the
"auto" limit, so drafts start there once the batch has thinned to 64 rows). Each cell is the
fastest of `--reps` interleaved repetitions; every row also checks that the token ids are the
same with and without drafts, and reports decode passes and accepted / fed drafts.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch


def _queries(n: int, seed: int) -> list[str]:
    from qpfast.data import QueryGenerator
    return [ex.query for ex in QueryGenerator("test").examples(n, seed=seed)]


def _run(eng, queries: list[str], batch_size: int) -> tuple[float, dict, list]:
    t0 = time.perf_counter()
    eng.generate(queries, batch_size=batch_size)
    return time.perf_counter() - t0, dict(eng.last_stats), list(eng.last_token_ids)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speculate", default="auto", help="the drafted engine's setting ('auto' or an int)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from qpfast.engine import Engine
    from qpfast.generate import default_model_dir
    spec = args.speculate if args.speculate == "auto" else int(args.speculate)
    plain = Engine(default_model_dir(), device="cpu", speculate=0)
    drafted = Engine(default_model_dir(), device="cpu", speculate=spec)
    warm = _queries(4, seed=1)
    plain.generate(warm)
    drafted.generate(warm)
    rows: list[dict[str, Any]] = []

    singles = _queries(40, seed=3)
    lat = {"plain": [], "drafted": []}
    passes = {"plain": 0, "drafted": 0}
    same = True
    acc = fed = 0
    for q in singles:
        out = {}
        for name, eng in (("plain", plain), ("drafted", drafted)):
            t, st, ids = _run(eng, [q], 1)
            lat[name].append(t)
            passes[name] += st["decode_forward_passes"]
            out[name] = ids
            if name == "drafted":
                acc += st["accepted_draft_tokens"]
                fed += st["draft_tokens"]
        same &= out["plain"] == out["drafted"]
    p90 = {k: sorted(v)[int(0.9 * len(v))] for k, v in lat.items()}
    rows.append(dict(case="1 query at a time (40 queries)", plain_s=statistics.median(lat["plain"]),
                     drafted_s=statistics.median(lat["drafted"]), plain_p90_s=p90["plain"],
                     drafted_p90_s=p90["drafted"], plain_passes=passes["plain"] / len(singles),
                     drafted_passes=passes["drafted"] / len(singles), accepted=acc, fed=fed, same=same))

    for n in (4, 16, 64, 128):
        qs = _queries(n, seed=5)
        best = {"plain": float("inf"), "drafted": float("inf")}
        stats: dict[str, dict] = {}
        ids: dict[str, list] = {}
        for _ in range(args.reps):
            for name, eng in (("plain", plain), ("drafted", drafted)):
                t, stats[name], ids[name] = _run(eng, qs, n)
                best[name] = min(best[name], t)
        rows.append(dict(case=f"{n} queries, batch {n}", plain_s=best["plain"], drafted_s=best["drafted"],
                         plain_passes=stats["plain"]["decode_forward_passes"],
                         drafted_passes=stats["drafted"]["decode_forward_passes"],
                         accepted=stats["drafted"]["accepted_draft_tokens"], fed=stats["drafted"]["draft_tokens"],
                         same=ids["plain"] == ids["drafted"]))

    print(f"speculative drafts, default model, CPU, torch threads={args.threads}, speculate={spec!r}")
    print("| case | speculate=0 | drafts | speedup | decode passes | drafts accepted / fed | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        extra = ""
        if "plain_p90_s" in r:
            extra = f" (p90 {r['plain_p90_s'] * 1e3:.0f} / {r['drafted_p90_s'] * 1e3:.0f} ms)"
        print(f"| {r['case']} | {r['plain_s'] * 1e3:.0f} ms | {r['drafted_s'] * 1e3:.0f} ms{extra} | "
              f"{r['plain_s'] / r['drafted_s']:.2f}x | {r['plain_passes']:.1f} -> {r['drafted_passes']:.1f} | "
              f"{r['accepted']} / {r['fed']} | {'yes' if r['same'] else 'NO'} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(threads=args.threads, speculate=spec, rows=rows), f, indent=1)
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
