#!/usr/bin/env python
"""The engine's two KV-cache layouts end to end, side by side, at several batch sizes.

    python bench/bench_engine_layouts.py [--batches 16,64,128] [--reps 5] [--step-tokens 256,512]
                                         [--one-graph kernels,cascade] [--own-copies] [--projections 256]
                                         [--pdl] [--out layouts.json]

"kernels": the prompt prefix copied into every slot of the cache, each decode step reading
it once per row; "cascade": the prefix stored once and attended by all rows together
(`kernels/cascade.py`). Both engines serve a random 0.6B Qwen3-shaped model in bf16 on the
GPU (`bench_kernels._qwen3_06b_dir`), warmed up (`Engine.warmup`: every graph shape, the
cache) before anything is timed; then for each batch size the two take turns, `--reps`
times each, and the medians, decode passes and rows with the same tokens are printed;
`--step-tokens` adds, for each layout, graph steps of up to that many query positions
(`DecodeGraphs.max_step_tokens`, 512 by default: more tokens a row per step at a batch);
`--one-graph` adds, for the layouts named, an engine launching each step as one CUDA graph
instead of the default pieces (`DecodeGraphs.pieces`); `--own-copies` one whose "kernels"
layout steps read each row's own prefix copy (`NativeRunner.row0_reads = False`, the engine
before session 18); `--projections N` one whose "kernels" layout runs the layer projections of
steps of up to N tokens through `qpfast.kernels.linear` (`NativeRunner.set_projection_rows`:
K split across the SMs, SwiGLU fused) instead of torch's GEMMs; `--pdl` one whose "kernels"
layout graphs are captured with programmatic dependent launch (`DecodeGraphs.set_pdl`), and
with `--projections` also one with both.
At batch 64 it also times `model.generate` + xgrammar on the same queries (the
`bench_kernels` baseline). Without CUDA it runs on the CPU (a smoke run: the CPU has no
graphs or Triton kernels, so its times say nothing about the GPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_kernels as bk  # noqa: E402

LAYOUTS = ("kernels", "cascade")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_layouts(configs: dict, batches, reps: int, baseline_at: int | None = 64) -> list[dict]:
    """`configs`: name -> (warmed-up `qpfast.Engine`, its graphs' `max_step_tokens` or
    None to leave it). One row per batch size: each configuration's median wall seconds
    over `reps` interleaved runs (after one untimed run, which also records any new graph
    shape), decode passes, output tokens, and how many rows gave the first one's tokens."""
    rows = []
    for b in batches:
        queries = (bk.QP_QUERIES * (b // len(bk.QP_QUERIES) + 1))[:b]
        times: dict[str, list[float]] = {name: [] for name in configs}

        def run(name: str) -> float:
            eng, step_tokens = configs[name]
            if step_tokens is not None:
                eng.runner.graphs.max_step_tokens = step_tokens
            _sync(eng.device)
            t0 = time.perf_counter()
            eng.generate(queries, batch_size=b)
            _sync(eng.device)
            return time.perf_counter() - t0

        for name in configs:
            run(name)
        for _ in range(reps):
            for name in configs:
                times[name].append(run(name))
        row: dict = dict(batch=b, configs={})
        first = None
        for name in configs:
            run(name)                          # its stats and tokens (same as the timed runs')
            eng = configs[name][0]
            st = eng.last_stats
            r = row["configs"][name] = dict(wall_s=statistics.median(times[name]), wall_s_all=times[name],
                                            decode_passes=int(st["decode_forward_passes"]),
                                            output_tokens=int(st["output_tokens"]), errors=int(st["errors"]))
            if first is None:
                first = eng.last_token_ids
            else:
                r["same_rows"] = sum(x == y for x, y in zip(first, eng.last_token_ids))
        if baseline_at == b:
            row["xgrammar_baseline"] = bk._xgrammar_baseline(configs[next(iter(configs))][0], queries)
        rows.append(row)
        _print_row(row)
    return rows


def _print_row(row: dict) -> None:
    base = row["configs"][next(iter(row["configs"]))]["wall_s"]
    print(f"  batch {row['batch']}", flush=True)
    for name, r in row["configs"].items():
        print(f"    {name:>14}: {r['wall_s']:.3f} s ({base / r['wall_s']:.2f}x the first)  {r['decode_passes']} passes"
              f"  {r['output_tokens']} tokens  errors {r['errors']}"
              + (f"  {r['same_rows']} rows as the first" if "same_rows" in r else ""), flush=True)
    xg = row.get("xgrammar_baseline") or {}
    if "wall_s" in xg:
        print(f"    HF generate + xgrammar: {xg['wall_s']:.3f} s ({xg['wall_s'] / base:.2f}x the first)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="16,64,128")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--step-tokens", default="",
                    help="extra max_step_tokens values to time for each layout (e.g. 256,512)")
    ap.add_argument("--one-graph", default="",
                    help="layouts to also time with each step launched as one graph (e.g. kernels)")
    ap.add_argument("--own-copies", action="store_true",
                    help="also time the kernels layout with every row reading its own prefix copy")
    ap.add_argument("--projections", type=int, default=0, metavar="N",
                    help="also time the kernels layout with the projections of steps of up to N tokens "
                         "through kernels.linear")
    ap.add_argument("--pdl", action="store_true",
                    help="also time the kernels layout with its graphs captured with programmatic dependent launch")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    batches = [int(x) for x in args.batches.split(",") if x.strip()]
    import qpfast
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    out: dict = dict(device=torch.cuda.get_device_name() if cuda else "cpu", batches=batches, reps=args.reps)
    with tempfile.TemporaryDirectory(prefix="qpfast-layouts-") as tmp:
        model_dir = bk._qwen3_06b_dir(tmp)
        configs = {}
        one_graph = [x.strip() for x in args.one_graph.split(",") if x.strip()]
        for name in LAYOUTS:
            eng = qpfast.Engine(model_dir, device=device, dtype=dtype, attention=name)
            out[f"warmup_{name}"] = eng.warmup(batch_size=max(batches))
            graphs = getattr(eng.runner, "graphs", None)
            configs[name] = (eng, graphs.max_step_tokens if graphs is not None else None)
            if graphs is not None:
                for n in [int(x) for x in args.step_tokens.split(",") if x.strip()]:
                    configs[f"{name}/{n}"] = (eng, n)
            if graphs is not None and name == "kernels" and args.own_copies:
                own = qpfast.Engine(model_dir, device=device, dtype=dtype, attention=name)
                own.runner.row0_reads = False
                out["warmup_kernels/own-copies"] = own.warmup(batch_size=max(batches))
                configs["kernels/own-copies"] = (own, None)
            variants = [("projections", args.projections, False)] if args.projections else []
            if args.pdl:
                variants += [("pdl", 0, True)] + ([("pdl+projections", args.projections, True)]
                                                  if args.projections else [])
            for label, proj_rows, pdl in variants if graphs is not None and name == "kernels" else []:
                var = qpfast.Engine(model_dir, device=device, dtype=dtype, attention=name)
                var.runner.set_projection_rows(proj_rows)
                var.runner.graphs.set_pdl(pdl)
                out[f"warmup_kernels/{label}"] = var.warmup(batch_size=max(batches))
                configs[f"kernels/{label}"] = (var, None)
            if graphs is not None and name in one_graph:
                one = qpfast.Engine(model_dir, device=device, dtype=dtype, attention=name)
                one.runner.graphs.set_pieces([0, len(one.runner.layers)])
                out[f"warmup_{name}/1graph"] = one.warmup(batch_size=max(batches))
                configs[f"{name}/1graph"] = (one, None)
        print(f"== engine layouts ({out['device']}, {dtype}; warm-up "
              + ", ".join(f"{k[7:]} {v['seconds']:.1f} s" for k, v in out.items() if k.startswith("warmup_"))
              + ")", flush=True)
        out["rows"] = compare_layouts(configs, batches, args.reps)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
