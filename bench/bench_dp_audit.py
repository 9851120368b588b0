"""The empirical DP audit (dp_audit): its wall time against one training of the same recipe, and how tight its bound is.

Run from the project root:  .venv/bin/python bench/bench_dp_audit.py [--data digits|mnist] [--canaries 1000] [--epochs 30]

For each recipe (the built-in MLP trained plainly, then DP-SGD at several target epsilons) the
audit trains the recipe once more with the canaries; its floor is that one training. The baseline,
measured in the same process, is one training of the recipe on the training split alone (no
canaries), through the same trainer. Printed: the accountant's epsilon of the audited run, the
empirical lower bound at 95 % confidence, their ratio (the bound's tightness), the guesses behind
it, and the audit's wall time as a multiple of the baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def main() -> None:
    import warnings

    import torch

    from attacks.base import AttackContext
    from attacks.dp_audit import OneRunDPAudit
    from audit.data import load_dataset, split_dataset
    from audit.session import trainer_for
    from defenses.training import DPSGD

    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    args = parser.parse_args()
    torch.set_num_threads(2)

    if args.data == "digits":
        data_cfg = {"source": "digits", "split": [0.6, 0.2, 0.2]}
    else:
        data_cfg = {"source": "idx", "images": str(MNIST / "t10k-images-idx3-ubyte.gz"), "labels": str(MNIST / "t10k-labels-idx1-ubyte.gz"),
                    "split": [0.3, 0.2, 0.5]}
    data_cfg.update(input_range=[0.0, 1.0], scale="auto", max_samples=None, classes=None)
    dataset = load_dataset(data_cfg, ROOT, seed=0)
    splits = split_dataset(dataset, data_cfg["split"], seed=0)
    model = {"kind": "builtin", "name": "mlp", "architecture": "mlp", "hidden": [128, 64], "channels": [16, 32], "epochs": args.epochs,
             "batch_size": 64, "learning_rate": 1e-3, "weight_decay": 0.0, "optimizer": "adam"}
    print(f"{args.data}: {len(splits.train)} training samples, {args.canaries} canaries asked, MLP, {args.epochs} epochs; torch threads 2")
    print("| recipe | accountant epsilon | lower bound (95 %) | bound / epsilon | guesses right | audit s | one training s | x training |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    recipes = [("plain", None)] + [(f"dp_sgd eps {e:g}", ("dp", DPSGD(target_epsilon=e, epochs=args.epochs))) for e in args.epsilons]
    x_train, y_train = dataset.x[splits.train], dataset.y[splits.train]
    trainer_for(model, dataset).train(x_train[:256], y_train[:256], 0)  # warm-up: the first training pays torch's start-up
    for label, defense in recipes:
        trainer = trainer_for(model, dataset, splits=splits, defense=defense)
        start = time.perf_counter()
        trainer.train(x_train, y_train, 12345)
        baseline = time.perf_counter() - start
        start = time.perf_counter()
        out = OneRunDPAudit(canaries=args.canaries).run(None, None, None, AttackContext(3, dataset.class_names, dataset, splits, trainer))
        seconds = time.perf_counter() - start
        rows = {row["metric"]: row for row in out.rows}
        bound = rows["dp_epsilon_lower_bound"]["value"]
        claimed = rows.get("dp_epsilon_claimed", {}).get("value")
        accuracy = rows["dp_audit_guess_accuracy"]
        tight = f"{bound / claimed:.2f}" if claimed else "-"
        print(f"| {label} | {claimed if claimed is None else f'{claimed:.3g}'} | {bound:.3g} | {tight} | "
              f"{round(accuracy['value'] * accuracy['n'])} / {accuracy['n']} | {seconds:.1f} | {baseline:.1f} | {seconds / baseline:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
