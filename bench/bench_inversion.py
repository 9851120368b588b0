"""Model inversion: Kansa's batched MIFace against ART's own MIFace on the same model, start images and steps.

Run from the project root:  .venv/bin/python bench/bench_inversion.py [--steps 300] [--repeats 3]

Both reconstruct all classes at once from the same start (the mean image), with ART 1.20's
update rule; ART computes one class gradient per class and step, Kansa one backward pass per
step. The script prints the wall time of each (best of --repeats), their ratio, and the largest
difference between the reconstructions, on the digits CNN of the default audit and on an MNIST CNN.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def target_for(source: dict, epochs: int):
    import torch

    from audit.data import load_dataset, split_dataset, validate_data_config
    from audit.models import build_builtin, make_target, train, validate_model_config
    from audit.params import Location

    where = Location("bench")
    dataset = load_dataset(validate_data_config(source, where.child("data")), ROOT, seed=0)
    splits = split_dataset(dataset, [0.6, 0.2, 0.2], seed=0)
    cfg = validate_model_config({"name": "cnn", "epochs": epochs}, where.child("models"))
    torch.manual_seed(0)
    module = build_builtin(cfg, dataset.input_shape, dataset.n_classes, dataset.is_image)
    train(module, dataset.x[splits.train], dataset.y[splits.train], cfg, seed=0, progress=False, label="cnn")
    return dataset, make_target(module, dataset, "logits", "cnn")


def best_of(repeats: int, run) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    import numpy as np
    import torch
    from art.attacks.inference.model_inversion import MIFace as ArtMIFace

    from attacks.inversion import mi_face
    from attacks.membership import target_view

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"# MIFace, {args.steps} steps, best of {args.repeats}; {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print("| model | ART MIFace (s) | Kansa mi_face (s) | ratio | max abs difference |")
    print("| --- | --- | --- | --- | --- |")
    sources = [("digits CNN", {"source": "digits"}, 20)]
    if (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        sources.append(("MNIST CNN", {"source": "idx", "images": str(MNIST / "t10k-images-idx3-ubyte.gz"),
                                      "labels": str(MNIST / "t10k-labels-idx1-ubyte.gz"), "max_samples": 3000}, 3))
    for label, source, epochs in sources:
        dataset, target = target_for(source, epochs)
        start = np.repeat(dataset.x.mean(axis=0, keepdims=True), dataset.n_classes, axis=0).astype(np.float32)
        labels = np.arange(dataset.n_classes)
        art = ArtMIFace(target_view(target), max_iter=args.steps, learning_rate=0.1, batch_size=len(labels), verbose=False)
        art_seconds, art_out = best_of(args.repeats, lambda: art.infer(start.copy(), labels))
        ours_seconds, ours_out = best_of(args.repeats, lambda: mi_face(target, start, labels, args.steps, 0.1))
        difference = float(np.abs(np.asarray(ours_out) - np.asarray(art_out)).max())
        print(f"| {label} | {art_seconds:.2f} | {ours_seconds:.2f} | {art_seconds / ours_seconds:.1f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
