"""Model formats and devices: load time and attack-pass time of one CNN saved in every format Kansa loads.

Run from the project root:  .venv/bin/python bench/bench_formats.py [--samples 1000] [--rounds 3]

The CNN is trained here with plain torch on 6,000 MNIST test-split images, then saved as a state_dict,
safetensors, TorchScript, torch.export and ONNX (converted to torch by Kansa). For each format: the
best-of-N load time (Kansa's loader, the ONNX one including its check against onnxruntime on the
attacked samples) and the time of one PGD-20 pass (eps 0.1) through Kansa's Target on the same samples.
Ratios are against the state_dict, measured in the same process. On a machine with CUDA the passes
are measured on the GPU too.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def mnist() -> tuple[np.ndarray, np.ndarray]:
    images = np.frombuffer(gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    return (images.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), labels.astype(np.int64)


def cnn() -> Any:
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def trained(x: np.ndarray, y: np.ndarray) -> Any:
    import torch

    torch.manual_seed(0)
    model = cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(2):
        for idx in torch.randperm(len(yt)).split(128):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            optimizer.step()
    return model.eval()


def save_all(model: Any, folder: Path) -> dict[str, dict[str, Any]]:
    """Each format's model config, as a team would declare it."""
    import torch
    from safetensors.torch import save_file

    (folder / "bench_nets.py").write_text(f"from __future__ import annotations\n\n{inspect.getsource(cnn)}\n\ndef build():\n    return cnn()\n", encoding="utf-8")
    torch.save(model.state_dict(), folder / "weights.pt")
    save_file(model.state_dict(), str(folder / "weights.safetensors"))
    torch.jit.save(torch.jit.script(model), str(folder / "model.ts"))
    example = torch.zeros(2, 1, 28, 28)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(folder / "model.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(folder / "model.onnx"), input_names=["x"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    factory = {"factory": "bench_nets:build", "factory_args": None, "strict": True}
    return {
        "state_dict": {"kind": "state_dict", "path": "weights.pt", **factory},
        "safetensors": {"kind": "safetensors", "path": "weights.safetensors", **factory},
        "torchscript": {"kind": "torchscript", "path": "model.ts"},
        "exported": {"kind": "exported", "path": "model.pt2", "allow_unsafe_pickle": True},
        "onnx": {"kind": "onnx", "path": "model.onnx"},
    }


def best_interleaved(rounds: int, runs: dict[str, Callable[[], Any]]) -> dict[str, tuple[float, Any]]:
    """{name: (best seconds, result)}: each round runs every one once, in turn, so load from other processes spreads over all."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, Any] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: (min(times[name]), results[name]) for name in runs}


def main() -> None:
    import sys

    import torch

    sys.path.insert(0, str(ROOT))
    from attacks.base import AttackContext
    from attacks.evasion import PGD
    from audit.data import Dataset
    from audit.models import load_model, make_target

    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    x, y = mnist()
    model = trained(x[:6000], y[:6000])
    audited, truth = x[-args.samples:], y[-args.samples:]
    dataset = Dataset("mnist", audited, truth, [str(c) for c in range(10)], (0.0, 1.0), True)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, devices: {', '.join(devices)}; {args.samples} attacked samples, "
          f"PGD-20 eps 0.1, best of {args.rounds}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        configs = {name: {"name": name, "output": "auto", "normalize": None, **cfg} for name, cfg in save_all(model, folder).items()}
        loads = best_interleaved(args.rounds, {name: (lambda cfg=cfg: load_model(cfg, folder, audited)) for name, cfg in configs.items()})
        attack = PGD(eps=[0.1], steps=20, random_starts=0)

        def attack_pass(target: Any) -> float:
            output = attack.run(target, audited, truth, AttackContext(0, dataset.class_names))
            return next(r["value"] for r in output.rows if r["metric"] == "robust_accuracy" and r.get("subset", "all") == "all")

        targets = {(name, device): make_target(loads[name][1].module, dataset, "logits", name, device=device)
                   for device in devices for name in configs}
        passes = best_interleaved(args.rounds, {key: (lambda target=target: attack_pass(target)) for key, target in targets.items()})
        rows = [(name, device, loads[name][0], *passes[(name, device)]) for name, device in targets]
    base = {device: next(r for r in rows if r[0] == "state_dict" and r[1] == device) for device in devices}
    print("| format | device | load s | ratio | PGD-20 pass s | ratio | robust accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, device, load_s, pass_s, robust in rows:
        ref = base[device]
        print(f"| {name} | {device} | {load_s:.4f} | {load_s / ref[2]:.2f}x | {pass_s:.3f} | {pass_s / ref[3]:.2f}x | {robust:.4f} |")
    if len(devices) == 1:
        print("no CUDA device here: the GPU rows are not measured")


if __name__ == "__main__":
    main()
