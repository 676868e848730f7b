"""Re-average a finished training run's checkpoints with other export weights and score each
candidate on held-out files (dev splits), without retraining.

The recipe's export is ``(1 - s) * [(1 - w) * stage 3 + w * stage 1] + s * branch stage 3``
with per-decoder-layer stage-1 weights (`qpfast.train.recipe.average_weights_`). This script
builds that model for each candidate ``w`` (a number or ``w/l0,l1,...`` with per-layer
weights) and soup weight, evaluates it with `qpfast.evaluate.run_eval`, and prints one row per
candidate and file. Choose on dev splits, never on the test split the README reports.

    python bench/export_sweep.py --run runs/L5 --data runs/L5/data/dev.jsonl dev2.jsonl \
        --w 0.5/0.667,0.667,0.5,0.333,0.167,0.167 0.3 0 --soup 0.5 0.3
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def parse_w(text: str) -> tuple[float, list[float]]:
    """``"0.5"`` -> (0.5, []); ``"0.5/0.6,0.4"`` -> (0.5, [0.6, 0.4])."""
    w, _, layers = text.partition("/")
    return float(w), [float(x) for x in layers.split(",")] if layers else []


def build(run: Path, w: float, layers: list[float], soup: float, out: Path, dtype: str = "bfloat16") -> Path:
    """The export for these weights (`qpfast.train.recipe.export_model`, as the recipe's export
    stage builds it), saved with the tokenizer in `out`."""
    from transformers import AutoTokenizer

    from qpfast.train.recipe import export_model

    model = export_model(run / "stage3", stage1=run / "stage1", w=w, layer_weights=layers, branch3=run / "branch3",
                         soup=soup, dtype=dtype)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(run / "stage3")).save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    from qpfast.evaluate import model_predictor, run_eval

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, type=Path, help="run directory with stage1/, stage3/ (and branch3/)")
    ap.add_argument("--data", required=True, nargs="+", help="JSONL files to score on (dev splits)")
    ap.add_argument("--w", nargs="+", default=["0.5"], help="stage-1 weights: W or W/L0,L1,... per decoder layer")
    ap.add_argument("--soup", nargs="+", type=float, default=[0.5], help="branch weights (0: no soup)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    keys = ("seg_f1", "ner_f1", "weight_f1", "cat_acc", "cat1_acc", "intent_f1", "overall")
    print("| w | layers | soup | data | " + " | ".join(keys) + " |")
    print("|---|---|---:|---|" + "---:|" * len(keys))
    with tempfile.TemporaryDirectory() as tmp:
        for wtext in args.w:
            w, layers = parse_w(wtext)
            for s in args.soup:
                d = build(args.run, w, layers, s, Path(tmp) / f"{wtext}-{s}".replace("/", "_"))
                predictor = model_predictor(str(d), batch_size=args.batch_size)
                for data in args.data:
                    rep = run_eval(data, predictor)
                    print(f"| {w:g} | {','.join(f'{x:g}' for x in layers) or '-'} | {s:g} | {Path(data).name} | "
                          + " | ".join(f"{rep.get(k, float('nan')):.4f}" for k in keys) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
