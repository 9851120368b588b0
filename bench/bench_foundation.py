"""Foundation benchmark: whole-audit wall time and peak memory, and attack-pass cost vs a hand-written torch loop.

Run from the project root:  .venv/bin/python bench/bench_foundation.py
Every ratio is measured against a baseline timed in the same process on the same model, data and batch size.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
KANSA = Path(sys.executable).parent / "kansa"

MNIST_AUDIT = f"""
title = "MNIST benchmark"
seed = 0
[data]
source = "idx"
images = "{MNIST / 't10k-images-idx3-ubyte.gz'}"
labels = "{MNIST / 't10k-labels-idx1-ubyte.gz'}"
split = [0.6, 0.2, 0.2]
[[models]]
name = "cnn"
epochs = 5
batch_size = 128
[[attacks]]
name = "fgsm"
eps = [0.05, 0.1, 0.2, 0.3]
[[attacks]]
name = "pgd"
eps = 0.1
steps = 40
"""


def timed_cli(config: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `kansa run`, start-up included, from /usr/bin/time -v."""
    done = subprocess.run(
        ["/usr/bin/time", "-v", str(KANSA), "run", str(config), "--out", str(out), "--quiet"],
        capture_output=True, text=True, check=True,
    )
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = int(wall.group(1) or 0), int(wall.group(2)), float(wall.group(3))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return hours * 3600 + minutes * 60 + seconds, rss_kb / 1024


def hand_fgsm(module, x: np.ndarray, y: np.ndarray, eps: float, batch: int) -> float:
    import torch

    correct = 0
    for i in range(0, len(x), batch):
        xb, yb = torch.from_numpy(x[i : i + batch]), torch.from_numpy(y[i : i + batch])
        with torch.no_grad():
            module(xb)  # clean prediction, as the audit reports clean accuracy beside robust accuracy
        xg = xb.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(module(xg), yb), xg)
        with torch.no_grad():
            adv = (xb + eps * grad.sign()).clamp(0, 1)
            correct += int((module(adv).argmax(1) == yb).sum())
    return correct / len(x)


def hand_pgd(module, x: np.ndarray, y: np.ndarray, eps: float, steps: int, batch: int) -> float:
    import torch

    step = eps * 2.5 / steps
    correct = 0
    for i in range(0, len(x), batch):
        xb, yb = torch.from_numpy(x[i : i + batch]), torch.from_numpy(y[i : i + batch])
        with torch.no_grad():
            module(xb)
        adv = (xb + torch.empty_like(xb).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(module(adv), yb), adv)
            with torch.no_grad():
                adv = torch.min(torch.max(adv + step * grad.sign(), xb - eps), xb + eps).clamp(0, 1)
        with torch.no_grad():
            correct += int((module(adv).argmax(1) == yb).sum())
    return correct / len(x)


def best_of(repeats: int, fn) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def attack_ratios(repeats: int) -> None:
    from attacks.base import AttackContext
    from attacks.evasion import FGSM, PGD
    from audit.config import load_config
    from audit.data import load_dataset, split_dataset
    from audit.models import build_builtin, make_target, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "mnist.toml"
        cfg_path.write_text(MNIST_AUDIT)
        config = load_config(cfg_path)
    data = load_dataset(config.data, ROOT, 0)
    splits = split_dataset(data, config.data["split"], 0)
    import torch

    torch.manual_seed(0)
    module = build_builtin(config.models[0], data.input_shape, data.n_classes, data.is_image)
    train(module, data.x[splits.train], data.y[splits.train], config.models[0], 0, False, "cnn")
    target = make_target(module, data, "logits", "cnn")
    x, y = data.x[splits.test], data.y[splits.test]
    context = AttackContext(0, data.class_names)
    print(f"\n## Attack pass vs hand-written torch loop (MNIST CNN, {len(y)} test images, best of {repeats})")
    print("| pass | batch | kansa s | torch loop s | ratio | kansa robust acc | loop robust acc |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for batch in (128, 256, 512):
        fgsm = FGSM(eps=0.1, batch_size=batch)
        k_time, k_out = best_of(3 * repeats, lambda: fgsm.run(target, x, y, context))
        h_time, h_acc = best_of(3 * repeats, lambda: hand_fgsm(target.module, x, y, 0.1, batch))
        k_acc = [r["value"] for r in k_out.rows if r["metric"] == "robust_accuracy" and r.get("subset", "all") == "all"][0]
        print(f"| FGSM eps 0.1 | {batch} | {k_time:.3f} | {h_time:.3f} | {k_time / h_time:.2f}x | {k_acc:.4f} | {h_acc:.4f} |")
    for batch in (128, 256, 512):
        pgd = PGD(eps=0.1, steps=40, batch_size=batch)
        k_time, k_out = best_of(repeats, lambda: pgd.run(target, x, y, context))
        h_time, h_acc = best_of(repeats, lambda: hand_pgd(target.module, x, y, 0.1, 40, batch))
        k_acc = [r["value"] for r in k_out.rows if r["metric"] == "robust_accuracy" and r.get("subset", "all") == "all"][0]
        print(f"| PGD-40 eps 0.1 | {batch} | {k_time:.3f} | {h_time:.3f} | {k_time / h_time:.2f}x | {k_acc:.4f} | {h_acc:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(f"# Kansa foundation benchmark ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        wall, rss = timed_cli(ROOT / "audit" / "resources" / "example.toml", tmp_path / "default")
        print(f"\n- default audit (digits CNN, FGSM + PGD-40 sweeps of 4 eps): wall {wall:.1f} s, peak RSS {rss:.0f} MiB")
        if MNIST.is_dir():
            config = tmp_path / "mnist.toml"
            config.write_text(MNIST_AUDIT)
            wall, rss = timed_cli(config, tmp_path / "mnist")
            print(f"- MNIST audit (train 6,000, attack 2,000; FGSM 4 eps, PGD-40 eps 0.1): wall {wall:.1f} s, peak RSS {rss:.0f} MiB")
    if MNIST.is_dir():
        attack_ratios(args.repeats)
    else:
        print(f"MNIST folder absent ({MNIST}); attack ratios skipped")


if __name__ == "__main__":
    main()
