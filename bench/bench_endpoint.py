"""A model behind an HTTP endpoint: queries per second, and the overhead per query against the same model in process.

Run from the project root:  .venv/bin/python bench/bench_endpoint.py [--samples 2000] [--rounds 3]

A small CNN (random weights: speed does not depend on them) on MNIST test-split images is served on
127.0.0.1 by the test suite's inference server (standard-library HTTP, Open Inference Protocol v2,
one thread per connection), and queried through Kansa's `Endpoint` with the query cache cold
(every input new), at several batch sizes. The baseline is the same model's forward pass in this
process on the same batches. The overhead per query is (endpoint time - in-process time) / inputs:
JSON encoding and decoding on both sides, HTTP, and the cache's lookups and writes. A second pass
over the same inputs shows the cache: nothing is sent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_formats import cnn, mnist  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from audit.endpoints import Endpoint
    from audit.models import validate_model_config
    from audit.params import Location
    from tests.endpoint_server import InferenceServer

    torch.manual_seed(0)
    model = cnn().eval()
    x, _ = mnist()
    x = x[: args.samples]
    print(f"{args.samples} MNIST inputs, CNN of {sum(p.numel() for p in model.parameters()):,} parameters, best of {args.rounds}")
    print(f"{'batch':>6} {'in-process s':>13} {'endpoint s':>11} {'queries/s':>10} {'ratio':>6} {'overhead ms/query':>18} {'cached pass s':>14}")
    with InferenceServer(model, (1, 28, 28)) as server, tempfile.TemporaryDirectory() as folder:
        for batch in (1, 16, 64, 256):
            n = min(args.samples, 200) if batch == 1 else args.samples
            local, remote, cached = [], [], []
            for round_ in range(args.rounds):
                cfg = validate_model_config({"kind": "http", "name": "served", "url": f"{server.url}/v2/models/cnn/infer", "batch_size": batch},
                                            Location("bench", "models[0]"))
                endpoint = Endpoint(cfg, 10, Path(folder) / f"q-{batch}-{round_}.sqlite")
                start = time.perf_counter()
                with torch.no_grad():
                    for i in range(0, n, batch):
                        model(torch.from_numpy(x[i : i + batch]))
                local.append(time.perf_counter() - start)
                start = time.perf_counter()
                for i in range(0, n, batch):
                    endpoint.scores(x[i : i + batch])
                remote.append(time.perf_counter() - start)
                start = time.perf_counter()
                for i in range(0, n, batch):
                    endpoint.scores(x[i : i + batch])
                cached.append(time.perf_counter() - start)
            best_local, best_remote = min(local), min(remote)
            print(f"{batch:>6} {best_local:>13.3f} {best_remote:>11.3f} {n / best_remote:>10.0f} {best_remote / best_local:>6.1f} "
                  f"{1000 * (best_remote - best_local) / n:>18.3f} {min(cached):>14.3f}   ({n} inputs)")


if __name__ == "__main__":
    main()
