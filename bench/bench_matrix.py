"""The defense matrix end to end: first run, cached re-runs, and the local vs Ray executor.

Issue 4 (digits): models {MLP, CNN} x defenses {none, PGD adversarial training, DP-SGD, feature
squeezing, pruning} x attacks {FGSM sweep, PGD, RMIA}. Issue 8 (MNIST): models {MLP, CNN} x
defenses {none, PGD adversarial training, DP-SGD} x the same attacks.

Each configuration is timed three ways with /usr/bin/time -v, in fresh folders and an empty
weight cache: the first run; a cached re-run into the same run folder (every cell journaled, every
weight cached: nothing trains or attacks); and a re-run into a new folder with the weight cache
warm (nothing trains; every attack runs again).

    .venv/bin/python bench/bench_matrix.py --data digits
    .venv/bin/python bench/bench_matrix.py --data mnist --executor local ray
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_foundation import KANSA, MNIST, timed  # noqa: E402

MODELS = """
[[models]]
name = "mlp"
architecture = "mlp"
epochs = {epochs}
batch_size = 128

[[models]]
name = "cnn"
architecture = "cnn"
epochs = {epochs}
batch_size = 128
"""

ATTACKS = """
[[attacks]]
name = "fgsm"
eps = [0.05, 0.1, 0.2, 0.3]

[[attacks]]
name = "pgd"
eps = [0.1]
steps = 20

[[attacks]]
name = "rmia"
references = 2
"""

DEFENSES = {
    "pgd_training": '[[defenses]]\nname = "madry_pgd"\nid = "pgd_training"\neps = 0.1\nsteps = 5\nepochs = {at_epochs}\n',
    "dp_sgd": '[[defenses]]\nname = "dp_sgd"\ntarget_epsilon = 3.0\n',
    "feature_squeezing": '[[defenses]]\nname = "feature_squeezing"\nbit_depth = 4\n',
    "pruning": '[[defenses]]\nname = "pruning"\nsparsity = 0.5\n',
}

DATA = {
    "digits": ('source = "digits"\nsplit = [0.6, 0.2, 0.2]', 20, 20, None, ["pgd_training", "dp_sgd", "feature_squeezing", "pruning"]),
    "mnist": (f'source = "idx"\nimages = "{MNIST / "t10k-images-idx3-ubyte.gz"}"\nlabels = "{MNIST / "t10k-labels-idx1-ubyte.gz"}"\n'
              "split = [0.3, 0.3, 0.4]", 5, 3, 1000, ["pgd_training", "dp_sgd"]),
}


def config_text(data: str, executor: str) -> str:
    source, epochs, at_epochs, samples, defenses = DATA[data]
    text = f'title = "matrix benchmark ({data})"\nseed = 0\n\n[data]\n{source}\n' + MODELS.format(epochs=epochs)
    if samples:
        text += f"\n[evaluation]\nsamples = {samples}\n"
    text += f'\n[execution]\nexecutor = "{executor}"\n' + ATTACKS
    return text + "\n" + "\n".join(DEFENSES[d].format(at_epochs=at_epochs) for d in defenses)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=sorted(DATA), default="digits")
    parser.add_argument("--executor", nargs="+", choices=("local", "ray"), default=["local"])
    args = parser.parse_args()
    print(f"# Matrix benchmark on {args.data}\n")
    print("| executor | run | wall s | CPU s | peak RSS MiB | trained | cells resumed | share of first run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for executor in args.executor:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            config = folder / "matrix.toml"
            config.write_text(config_text(args.data, executor))
            env = {**os.environ, "KANSA_CACHE": str(folder / "weights"), "KANSA_HISTORY": str(folder / "history.sqlite")}
            first = None
            for label, out in (("first run", "run"), ("cached re-run (same folder)", "run"), ("re-run, weights cached (new folder)", "run2")):
                timing = timed([str(KANSA), "run", str(config), "--out", str(folder / out), "--quiet"], env=env)
                metadata = json.loads((folder / out / "results.json").read_text())["metadata"]
                first = first or timing
                share = f"{timing.wall / first.wall:.1%}"
                print(f"| {executor} | {label} | {timing.wall:.1f} | {timing.cpu:.1f} | {timing.rss:.0f} | "
                      f"{len(metadata['training']['trained'])} | {metadata['execution']['resumed_cells']} / {len(metadata['cells'])} | {share} |",
                      flush=True)


if __name__ == "__main__":
    main()
