"""Attack strength and cost: every integrity attack on the digits CNN and on an MNIST CNN.

Run from the project root:  .venv/bin/python bench/bench_attacks.py [--mnist-samples 500]
Prints, per attack, robust accuracy with its interval and wall time, and the ensemble's
per-sample worst case next to the best single attack.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"

ATTACKS = """
[[attacks]]
name = "fgsm"
eps = [0.1, 0.2]
[[attacks]]
name = "pgd"
eps = [0.1, 0.2]
steps = 40
[[attacks]]
id = "apgd-ce"
name = "apgd"
eps = [0.1, 0.2]
[[attacks]]
id = "apgd-dlr"
name = "apgd"
loss = "dlr"
eps = [0.1, 0.2]
[[attacks]]
name = "autoattack"
eps = [0.1, 0.2]
[[attacks]]
name = "square"
eps = [0.1, 0.2]
queries = 1000
[[attacks]]
name = "transfer"
eps = [0.1, 0.2]
[[attacks]]
name = "cw"
eps = [1.0, 2.0]
[[attacks]]
name = "deepfool"
eps = [1.0, 2.0]
[[attacks]]
name = "hopskipjump"
eps = [1.0, 2.0]
"""

DIGITS = '[data]\nsource = "digits"\n[[models]]\nname = "cnn"\n' + ATTACKS
MNIST_CONFIG = f"""
[data]
source = "idx"
images = "{MNIST / 't10k-images-idx3-ubyte.gz'}"
labels = "{MNIST / 't10k-labels-idx1-ubyte.gz'}"
[[models]]
name = "cnn"
epochs = 5
batch_size = 128
[evaluation]
samples = SAMPLES
""" + ATTACKS


def report(label: str, config_text: str) -> None:
    from audit import run_audit

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.toml"
        path.write_text(config_text)
        start = time.perf_counter()
        result = run_audit(path, history=False)
        wall = time.perf_counter() - start
    table = result.table
    robust = table[(table["metric"] == "robust_accuracy") & (table["subset"] == "all")]
    seconds = {r["attack"]: r["value"] for _, r in table[table["metric"] == "attack_seconds"].iterrows()}
    clean = table[(table["metric"] == "accuracy") & (table["subset"] == "split=test")].iloc[0]["value"]
    print(f"\n### {label} (clean test accuracy {clean:.3f}; {result.metadata.data.evaluation_samples} attacked samples; whole run {wall:.0f} s)\n")
    print("| attack | eps | robust accuracy [95% CI] | attack wall s |")
    print("| --- | --- | --- | --- |")
    for _, r in robust.iterrows():
        print(f"| {r['attack']} | {r['param_value']:g} | {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
              f"{seconds.get(r['attack'], float('nan')):.1f} |")
    for name, eps_values in (("ensemble", (0.1, 0.2)), ("ensemble-l2", (1.0, 2.0))):
        for eps in eps_values:
            at = robust[robust["param_value"] == eps]
            singles = at[~at["attack"].str.startswith("ensemble")]
            ensemble = at[at["attack"] == name]
            if len(singles) and len(ensemble):
                best = singles.loc[singles["value"].idxmin()]
                print(f"\n- eps {eps:g}: {name} {ensemble.iloc[0]['value']:.3f} vs best single attack {best['attack']} {best['value']:.3f}", end="")
    flagged = table[(table["category"] == "sanity") & (table["value"] == 1.0)]
    print(f"\n- sanity flags: {', '.join(flagged['metric']) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mnist-samples", type=int, default=500)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    report("digits CNN", DIGITS)
    if MNIST.is_dir():
        report("MNIST CNN", MNIST_CONFIG.replace("SAMPLES", str(args.mnist_samples)))


if __name__ == "__main__":
    main()
