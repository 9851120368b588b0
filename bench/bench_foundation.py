"""Foundation benchmark: whole-audit wall time and peak memory, and attack-pass cost vs a hand-written torch loop.

Run from the project root:  nice .venv/bin/python bench/bench_foundation.py
Every ratio is measured against a baseline timed in the same process on the same model, data and batch size,
for Kansa's torch fast path (the default backend) and for Kansa on ART (`backend = "art"`).
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
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from attacks.base import AttackContext, EvasionAttack
    from audit.models import Target

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


class Timing(NamedTuple):
    wall: float  # seconds
    cpu: float  # user + system seconds: less sensitive than wall time to other processes on a shared machine
    rss: float  # peak resident set size, MiB


def timed(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Timing:
    """Wall time, CPU time and peak RSS of a command, start-up included, from /usr/bin/time -v."""
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=True, env=env, cwd=cwd)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = int(wall.group(1) or 0), int(wall.group(2)), float(wall.group(3))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", done.stderr).group(1)) for kind in ("User", "System"))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return Timing(hours * 3600 + minutes * 60 + seconds, cpu, rss_kb / 1024)


def timed_cli(config: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `kansa run`."""
    timing = timed([str(KANSA), "run", str(config), "--out", str(out), "--quiet"])
    return timing.wall, timing.rss


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


def best_of_each(rounds: int, passes: dict[str, Callable[[], float]]) -> dict[str, tuple[float, float]]:
    """{name: (best wall seconds, robust accuracy)} over `rounds` rounds that run every pass once, in turn.

    Interleaving the passes spreads any load from other processes over all of them, so the ratios stay
    comparable on a shared machine. Every pass starts from the same numpy and torch seeds.
    """
    import torch

    times: dict[str, list[float]] = {name: [] for name in passes}
    values: dict[str, float] = {}
    for _ in range(rounds):
        for name, fn in passes.items():
            np.random.seed(0)
            torch.manual_seed(0)
            start = time.perf_counter()
            values[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (min(times[name]), values[name]) for name in passes}


def robust_accuracy(attack: "EvasionAttack", target: "Target", x: np.ndarray, y: np.ndarray, context: "AttackContext") -> float:
    """Run Kansa's whole attack pass (clean prediction, attack, adversarial prediction, every metric) and read robust accuracy."""
    rows = attack.run(target, x, y, context).rows
    return [r["value"] for r in rows if r["metric"] == "robust_accuracy" and r.get("subset", "all") == "all"][0]


def attack_ratios(repeats: int, batches: list[int]) -> None:
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
    print(f"\n## Attack pass vs hand-written torch loop (MNIST CNN, {len(y)} test images)")
    print("Best of 3 x repeats (FGSM) or repeats (PGD) rounds; each round times the loop, Kansa's torch path and Kansa on ART in turn.\n")
    print("| pass | batch | torch loop s | kansa torch s | ratio | kansa ART s | ratio | robust acc loop / torch / ART |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    passes = (
        ("FGSM eps 0.1", 3 * repeats, lambda b, backend: FGSM(eps=0.1, batch_size=b, backend=backend),
         lambda b: hand_fgsm(target.module, x, y, 0.1, b)),
        ("PGD-40 eps 0.1", repeats, lambda b, backend: PGD(eps=0.1, steps=40, batch_size=b, backend=backend),
         lambda b: hand_pgd(target.module, x, y, 0.1, 40, b)),
    )
    for label, rounds, make, hand in passes:
        for batch in batches:
            fast, art = make(batch, "torch"), make(batch, "art")
            best = best_of_each(rounds, {
                "loop": lambda: hand(batch),
                "torch": lambda: robust_accuracy(fast, target, x, y, context),
                "art": lambda: robust_accuracy(art, target, x, y, context),
            })
            (loop_s, loop_acc), (torch_s, torch_acc), (art_s, art_acc) = best["loop"], best["torch"], best["art"]
            print(f"| {label} | {batch} | {loop_s:.3f} | {torch_s:.3f} | {torch_s / loop_s:.2f}x | {art_s:.3f} | {art_s / loop_s:.2f}x "
                  f"| {loop_acc:.4f} / {torch_acc:.4f} / {art_acc:.4f} |", flush=True)


def whole_audits() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        wall, rss = timed_cli(ROOT / "audit" / "resources" / "example.toml", tmp_path / "default")
        print(f"\n- default audit (digits CNN, FGSM + PGD-40 sweeps of 4 eps): wall {wall:.1f} s, peak RSS {rss:.0f} MiB")
        if MNIST.is_dir():
            config = tmp_path / "mnist.toml"
            config.write_text(MNIST_AUDIT)
            wall, rss = timed_cli(config, tmp_path / "mnist")
            print(f"- MNIST audit (train 6,000, attack 2,000; FGSM 4 eps, PGD-40 eps 0.1): wall {wall:.1f} s, peak RSS {rss:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3, help="rounds of PGD timing (FGSM: three times as many)")
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 256, 512], help="attack batch sizes to time")
    parser.add_argument("--ratios-only", action="store_true", help="skip the whole-audit timings")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(f"# Kansa foundation benchmark ({os.cpu_count()} cores)")
    if not args.ratios_only:
        whole_audits()
    if MNIST.is_dir():
        attack_ratios(args.repeats, args.batches)
    else:
        print(f"MNIST folder absent ({MNIST}); attack ratios skipped")


if __name__ == "__main__":
    main()
