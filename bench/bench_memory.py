"""Scale benchmark: wall time and peak memory of FGSM + PGD on the MNIST CNN as the attacked set grows.

Run from the project root:  nice .venv/bin/python bench/bench_memory.py
Two measurements per size, each a separate process under /usr/bin/time -v:

- audit: `kansa run` of an FGSM + PGD-40 audit (start-up, training, attacks and every output; the
  sanity checks only with --checks), with a fresh weight cache and history so every run trains;
- attacks only: a small driver that loads the data, builds the CNN (untrained: the cost of an attack
  does not depend on the weights) and runs the same two attacks, so no earlier phase (data loading,
  training, reports) sets the peak and hides what the attacks themselves hold.

The goal is time linear in the number of attacked samples and peak memory flat (attacks stream batches).
`--code DIR` runs another checkout's code (e.g. an export of an older commit) for a before/after table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_foundation import MNIST, ROOT, timed

AUDIT = f"""
title = "MNIST scale benchmark"
seed = 0
[data]
source = "idx"
images = "{MNIST / 't10k-images-idx3-ubyte.gz'}"
labels = "{MNIST / 't10k-labels-idx1-ubyte.gz'}"
split = [0.15, 0.05, 0.8]
[evaluation]
samples = {{samples}}
[checks]
enabled = {{checks}}
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


def environment(code: Path, tmp: Path, run: str) -> dict[str, str]:
    """The code under test on PYTHONPATH, and a fresh history and weight cache per run (so every run trains)."""
    return {**os.environ, "PYTHONPATH": str(code), "TQDM_DISABLE": "1",
            "KANSA_HISTORY": str(tmp / f"history-{run}.sqlite"), "KANSA_CACHE": str(tmp / f"cache-{run}")}


def config_file(tmp: Path, samples: int, checks: bool) -> Path:
    config = tmp / f"mnist-{samples}.toml"
    config.write_text(AUDIT.format(samples=samples, checks=str(checks).lower()))
    return config


def audit(samples: int, checks: bool, code: Path, tmp: Path) -> dict[str, float]:
    """`kansa run` on `samples` test images: wall s, CPU s, peak RSS MiB, and each attack cell's seconds from results.json."""
    out = tmp / f"run-{samples}"
    command = [sys.executable, "-m", "audit.cli", "run", str(config_file(tmp, samples, checks)), "--out", str(out), "--quiet", "--no-history"]
    # Not from the project root: `python -m` imports from the working directory before PYTHONPATH.
    timing = timed(command, environment(code, tmp, str(samples)), cwd=tmp)
    rows = json.loads((out / "results.json").read_text())["results"]
    seconds = {r["attack"]: r["value"] for r in rows if r["metric"] == "attack_seconds"}
    return {"samples": samples, **timing._asdict(), "fgsm": seconds["fgsm"], "pgd": seconds["pgd"]}


def attacks_only(samples: int, code: Path, tmp: Path) -> dict[str, float]:
    """The driver (this script with --driver) in its own process: wall s, CPU s, peak RSS MiB and each attack's seconds."""
    result = tmp / f"driver-{samples}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--driver", str(samples), str(config_file(tmp, samples, False)), str(result)]
    timing = timed(command, environment(code, tmp, f"driver-{samples}"), cwd=tmp)
    return {"samples": samples, **timing._asdict(), **json.loads(result.read_text())}


def driver(samples: int, config_path: Path, result: Path) -> None:
    """Run FGSM (4 eps) and PGD-40 on the first `samples` test images with the code on PYTHONPATH; write their seconds."""
    import torch

    from attacks.base import AttackContext
    from attacks.evasion import FGSM, PGD
    from audit.config import load_config
    from audit.data import load_dataset, split_dataset
    from audit.models import build_builtin, make_target

    config = load_config(config_path)
    data = load_dataset(config.data, config.base_dir, 0)
    test = split_dataset(data, config.data["split"], 0).test[:samples]
    torch.manual_seed(0)
    target = make_target(build_builtin(config.models[0], data.input_shape, data.n_classes, data.is_image), data, "logits", "cnn")
    x, y, context = data.x[test], data.y[test], AttackContext(0, data.class_names)
    del data  # only the attacked samples stay, as in the runner
    seconds: dict[str, float] = {}
    for name, attack in (("fgsm", FGSM(eps=[0.05, 0.1, 0.2, 0.3])), ("pgd", PGD(eps=0.1, steps=40))):
        np.random.seed(0)
        start = time.perf_counter()
        attack.run(target, x, y, context)
        seconds[name] = time.perf_counter() - start
    result.write_text(json.dumps(seconds))


def table(title: str, results: list[dict[str, float]]) -> None:
    print(f"\n## {title}\n")
    print("| attacked samples | wall s | CPU s | peak RSS MiB | fgsm s | pgd s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['samples']:,} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['rss']:.0f} | {r['fgsm']:.2f} | {r['pgd']:.2f} |")
    if len(results) > 2:
        n = np.array([r["samples"] for r in results], dtype=np.float64) / 1000
        for key in ("wall", "cpu", "pgd", "rss"):
            values = np.array([r[key] for r in results])
            slope, intercept = np.polyfit(n, values, 1)
            worst = float(np.max(np.abs(values - (slope * n + intercept)) / values))
            print(f"- {key}: {intercept:.1f} + {slope:.2f} per 1,000 samples (largest deviation from the line {100 * worst:.1f} %)")
    rss = [r["rss"] for r in results]
    print(f"- peak RSS from {results[0]['samples']:,} to {results[-1]['samples']:,} samples: {rss[-1] - rss[0]:+.0f} MiB; "
          f"largest {max(rss):.0f} MiB (goal <= 1,024)", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        driver(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose code runs the audits (default: this one)")
    parser.add_argument("--checks", action="store_true", help="run the sanity checks in the audits (their probes add about four PGD-40 passes)")
    args = parser.parse_args()
    code = args.code.resolve()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        probe = [sys.executable, "-c", "import attacks.base; print(attacks.base.__file__)"]
        used = subprocess.run(probe, env=environment(code, tmp, "probe"), cwd=tmp, capture_output=True, text=True, check=True)
        print(f"# Kansa scale benchmark ({os.cpu_count()} cores; attacks from {used.stdout.strip()})")
        table(f"Audit (`kansa run`; sanity checks {'on' if args.checks else 'off'})", [audit(n, args.checks, code, tmp) for n in args.samples])
        table("Attacks only (driver: data, untrained CNN, FGSM 4 eps + PGD-40)", [attacks_only(n, code, tmp) for n in args.samples])


if __name__ == "__main__":
    main()
