"""Privacy benchmark on MNIST: every membership attack's AUC and TPR at 0.1 % / 1 % FPR with intervals, and wall time.

Run from the project root:  .venv/bin/python bench/bench_privacy.py [--epochs 40] [--members 2000] [--out table.md]

The 10,000 MNIST test images are split 25 / 25 / 50 (train / hold-out / test). A CNN is trained
on the 2,500 training images to (near) 100 % training accuracy; 2,000 of them are the members,
2,000 hold-out images the non-members; the attacker owns the other 500 hold-out images plus the
5,000 test images (and, for attacks that learn from labelled examples, the 500 training images
that are not evaluated). Reference-model attacks (RMIA, LiRA) run with K = 1, 2, 4, 8 reference
models offline and K = 2, 4, 8 online. Reference model k is the same whatever K asks for it, so
the sweep trains each model once (8 offline, 8 online) and later runs reuse earlier ones, as
rmia and lira do within one audit. The table therefore shows each run's own wall time, and the
full cost of the attack with K models: its scoring time plus the training time of its K models
(each measured when it was trained).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MNIST = ROOT.parent / "shared" / "data" / "mnist"



def build(epochs: int, seed: int) -> tuple[Any, Any, Any, Any]:
    import torch

    from audit.data import load_dataset, split_dataset
    from audit.models import build_builtin, make_target, train
    from audit.session import trainer_for

    data_cfg = {
        "source": "idx", "images": str(MNIST / "t10k-images-idx3-ubyte.gz"), "labels": str(MNIST / "t10k-labels-idx1-ubyte.gz"),
        "input_range": [0.0, 1.0], "scale": "auto", "split": [0.25, 0.25, 0.5], "max_samples": None, "classes": None,
    }
    model_cfg = {
        "kind": "builtin", "name": "cnn", "architecture": "cnn", "hidden": [128, 64], "channels": [16, 32],
        "epochs": epochs, "batch_size": 128, "learning_rate": 1e-3, "weight_decay": 0.0, "optimizer": "adam",
    }
    dataset = load_dataset(data_cfg, ROOT, seed)
    splits = split_dataset(dataset, data_cfg["split"], seed)
    torch.manual_seed(seed)
    module = build_builtin(model_cfg, dataset.input_shape, dataset.n_classes, dataset.is_image)
    seconds = train(module, dataset.x[splits.train], dataset.y[splits.train], model_cfg, seed, False, "cnn")
    target = make_target(module, dataset, "logits", "cnn")
    accuracy = {name: float((target.predict(dataset.x[idx]) == dataset.y[idx]).mean()) for name, idx in splits.items()}
    print(f"target: {len(splits.train)} train images, {epochs} epochs in {seconds:.1f} s; accuracy {accuracy}", flush=True)
    return dataset, splits, target, trainer_for(model_cfg, dataset)


def runs(members: int, label_only_members: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, attack name, params): every attack of issue 3 once, reference attacks per K and mode."""
    out: list[tuple[str, str, dict[str, Any]]] = [
        ("loss threshold", "mia_loss", {}),
        ("confidence threshold", "mia_confidence", {}),
        ("ART rule-based", "mia_rule_based", {}),
        ("ART black-box rf, prediction", "mia_black_box", {"input": "prediction", "attack_model": "rf"}),
        ("ART black-box gb, prediction", "mia_black_box", {"input": "prediction", "attack_model": "gb"}),
        ("ART black-box rf, loss", "mia_black_box", {"input": "loss", "attack_model": "rf"}),
        ("ART shadow models (3), rf", "mia_shadow", {"shadows": 3}),
        (f"ART label-only ({label_only_members} + {label_only_members})", "mia_label_only", {"members": label_only_members}),
    ]
    for mode, ks in (("offline", (1, 2, 4, 8)), ("online", (2, 4, 8))):
        for k in ks:
            out.append((f"RMIA {mode} K={k}", "rmia", {"references": k, "mode": mode}))
            out.append((f"LiRA {mode} K={k}", "lira", {"references": k, "mode": mode}))
    return [(label, name, {"members": members, **params} if "members" not in params else params) for label, name, params in out]


def cell(row: dict[str, Any]) -> str:
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--label-only-members", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated attack names to run (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()

    from attacks import registry
    from attacks.base import AttackContext

    dataset, splits, target, trainer = build(args.epochs, args.seed)
    context = AttackContext(args.seed, dataset.class_names, dataset, splits, trainer)
    attacks = registry()
    only = {name for name in args.only.split(",") if name}
    lines = [
        "| attack | AUC [95% CI] | TPR @ 0.1% FPR | TPR @ 1% FPR | wall s (this run) | full cost s (scoring + K models' training) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    best_art = 0.0
    reference_best: dict[str, float] = {}
    for label, name, params in runs(args.members, args.label_only_members):
        if only and name not in only:
            continue
        start = time.perf_counter()
        output = attacks[name](**params).run(target, dataset.x[splits.test], dataset.y[splits.test], context)
        wall = time.perf_counter() - start
        rows = {(r["metric"], r.get("param_value")): r for r in output.rows}
        fresh = rows.get(("reference_training_seconds", None))
        full = f"{wall - fresh['value'] + rows[('reference_models_seconds', None)]['value']:.1f}" if fresh else f"{wall:.1f}"
        line = f"| {label} | {cell(rows[('auc', None)])} | {cell(rows[('tpr_at_fpr', 0.001)])} | {cell(rows[('tpr_at_fpr', 0.01)])} | {wall:.1f} | {full} |"
        print(line, flush=True)
        lines.append(line)
        tpr1 = rows[("tpr_at_fpr", 0.01)]["value"]
        if name.startswith("mia_") and name not in ("mia_loss", "mia_confidence"):
            best_art = max(best_art, tpr1)
        if name in ("rmia", "lira") and params["references"] <= 4:
            reference_best[label] = max(reference_best.get(label, 0.0), tpr1)
        notes = sorted({r["message"] for r in output.rows if r.get("message")})
        for note in notes:
            print(f"    note: {note}", flush=True)
    if reference_best:
        label, value = max(reference_best.items(), key=lambda item: item[1])
        verdict = "met" if value > best_art else "not met"
        summary = f"Goal (a reference-model attack with K <= 4 beats every ART attack at TPR@1% FPR): {verdict}: best {label} {value:.3f} vs best ART attack {best_art:.3f}."
        print(summary)
        lines += ["", summary]
    lines += ["", f"Machine: {platform.platform()}, {os.cpu_count()} CPUs."]
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
