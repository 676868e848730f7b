"""How sure is "model A beats model B on task k"? A paired bootstrap over distinct queries.

    python bench/paired_bootstrap.py --data runs/L5/data/test.jsonl \
        --a runs/L5/eval/stage3_predictions.jsonl --b legacy

Scores both prediction sets per example (DESIGN.md §6 counts), then resamples the distinct
queries with replacement — a query being its normalized text without spaces, ``q'``, what seg
and weights are scored on — so that every copy and spacing variant of one query goes in or out
together (the generated splits repeat queries; repeats are not independent evidence) and recomputes each
task's score from the summed counts. Prints, per task, A's and B's score, the difference A − B,
its 95% interval and the share of resamples in which A does not beat B. `--a`/`--b` are the
JSONL files that ``python -m qpfast eval --predictions`` or the training recipe
(``runs/NAME/eval/*_predictions.jsonl``) write, or ``legacy`` for the legacy pipeline.
"""
from __future__ import annotations

import argparse
from dataclasses import astuple

import numpy as np

from qpfast import normalize
from qpfast.evaluate import Counts, legacy_predictor, load_data, load_predictions, report, score_example

TASKS = ("seg_f1", "ner_f1", "weight_f1", "cat_acc", "cat1_acc", "intent_f1", "overall")


def _outputs(spec: str, queries: list[str]) -> list[str | None]:
    if spec == "legacy":
        return list(legacy_predictor()(queries))
    preds = load_predictions(spec)
    missing = sum(q not in preds for q in queries)
    if missing:
        raise SystemExit(f"{spec}: no prediction for {missing} of {len(queries)} queries")
    return [preds[q] for q in queries]


def cluster_counts(queries: list[str], targets: list[str], outputs: list[str | None]) -> np.ndarray:
    """[distinct queries, Counts fields]: the summed counts of each ``q'`` (normalized, spaces
    removed), in first-seen order."""
    index: dict[str, int] = {}
    rows: list[np.ndarray] = []
    for q, t, o in zip(queries, targets, outputs):
        row = np.array(astuple(score_example(q, t, o)), dtype=np.int64)
        k = index.setdefault(normalize(q).replace(" ", ""), len(index))
        if k == len(rows):
            rows.append(row)
        else:
            rows[k] += row
    return np.stack(rows)


def _report(vec: np.ndarray) -> dict:
    return report(Counts(*(int(x) for x in vec)))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per task: a, b (on the whole set), diff = a - b, lo/hi (95% interval of the difference)
    and p_not_better (share of resamples with a - b <= 0). `a`, `b`: `cluster_counts` of the
    same examples."""
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap: shapes differ ({a.shape} vs {b.shape})")
    if n_boot < 1:
        raise ValueError(f"n_boot: must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    full_a, full_b = _report(a.sum(0)), _report(b.sum(0))
    diffs = {t: [] for t in TASKS}
    n = a.shape[0]
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, n, n), minlength=n)  # how often each cluster is drawn
        ra, rb = _report(w @ a), _report(w @ b)
        for t in TASKS:
            diffs[t].append(ra[t] - rb[t])
    out = {}
    for t in TASKS:
        d = np.asarray(diffs[t])
        out[t] = {"a": full_a[t], "b": full_b[t], "diff": full_a[t] - full_b[t],
                  "lo": float(np.quantile(d, 0.025)), "hi": float(np.quantile(d, 0.975)),
                  "p_not_better": float(np.mean(d <= 0))}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="JSONL with query and target")
    ap.add_argument("--a", required=True, help="predictions JSONL (query, output) or 'legacy'")
    ap.add_argument("--b", default="legacy", help="predictions JSONL (query, output) or 'legacy' (default)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    queries, targets = load_data(args.data)
    a = cluster_counts(queries, targets, _outputs(args.a, queries))
    b = cluster_counts(queries, targets, _outputs(args.b, queries))
    res = paired_bootstrap(a, b, args.n_boot, args.seed)
    print(f"{len(queries)} examples, {a.shape[0]} distinct queries, {args.n_boot} resamples")
    print("| task | A | B | A - B | 95% interval | P(A <= B) |")
    print("|---|---:|---:|---:|---|---:|")
    for t, r in res.items():
        print(f"| {t} | {r['a']:.4f} | {r['b']:.4f} | {r['diff']:+.4f} | [{r['lo']:+.4f}, {r['hi']:+.4f}] "
              f"| {r['p_not_better']:.3f} |")


if __name__ == "__main__":
    main()
