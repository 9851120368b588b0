"""Attack strength and cost.

Run from the project root (a quiet machine; torchattacks and Foolbox installed for this script only: `make bench-deps`):

    .venv/bin/python bench/bench_attacks.py strong [--samples 300] [--only APGD-CE,AutoAttack]  # each strong attack: Kansa vs ART, torchattacks, Foolbox
    .venv/bin/python bench/bench_attacks.py l2 [--samples 500]       # the MNIST CNN at L2 eps 1 and 2: the L2 ensemble vs DeepFool / CW / ART's APGD-L2
    .venv/bin/python bench/bench_attacks.py audit [--samples 1000]   # the 3-model MNIST audit (FGSM, PGD-40, Square 300, transfer; checks on)
    .venv/bin/python bench/bench_attacks.py ensemble [--samples 500] # every integrity attack through a whole audit, digits and MNIST
    .venv/bin/python bench/bench_attacks.py layout                   # a pass of the built-in CNNs, NCHW weights vs the channels-last copy attacks run

`strong`: one MNIST CNN and one set of test samples for every implementation, in one process. Per
attack: wall time, robust accuracy with its 95% interval, and for Kansa the ratio to a compute floor:
the forward and backward passes Kansa actually made, each at the cost a bare pass of that many
samples takes on this machine (measured first, by a loop with nothing else in it). Implementations
that Kansa does not ship (torchattacks, Foolbox) are skipped with a line when absent.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import torch

    from audit.models import Target

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
MNIST_DATA = f"""
[data]
source = "idx"
images = "{MNIST / 't10k-images-idx3-ubyte.gz'}"
labels = "{MNIST / 't10k-labels-idx1-ubyte.gz'}"
"""
CNN = '[[models]]\nname = "cnn"\nepochs = 5\nbatch_size = 128\n'


# --- strong: each attack against the other implementations -------------------------------------------


class Recorder:
    """Wraps the model and records each forward pass: its size and whether an input gradient follows."""

    def __init__(self) -> None:
        self.passes: list[tuple[int, bool]] = []

    def module(self, inner: "torch.nn.Module") -> "torch.nn.Module":
        import torch

        recorder = self

        class Recorded(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                recorder.passes.append((len(x), torch.is_grad_enabled() and x.requires_grad))
                return self.inner(x)

        return Recorded().eval()


def pass_costs(module: "torch.nn.Module", x: np.ndarray, largest: int) -> Callable[[int, bool], float]:
    """Seconds of one bare forward (or forward and input-gradient backward) pass by batch size, interpolated between powers of two
    up to `largest`."""
    import torch

    sizes = sorted({1, *[2**k for k in range(1, 12) if 2**k < largest], largest})
    cost: dict[bool, list[float]] = {False: [], True: []}
    for size in sizes:
        batch = torch.from_numpy(np.resize(x, (size, *x.shape[1:])).astype(np.float32))
        for grad in (False, True):
            times = []
            for _ in range(7):
                start = time.perf_counter()
                if grad:
                    point = batch.clone().requires_grad_(True)
                    torch.autograd.grad(module(point).logsumexp(1).sum(), point)
                else:
                    with torch.no_grad():
                        module(batch)
                times.append(time.perf_counter() - start)
            cost[grad].append(float(np.median(times)))

    def seconds(size: int, grad: bool) -> float:
        """Beyond the largest size measured, its per-sample cost: the cheapest per sample, so the floor errs low."""
        if size > sizes[-1]:
            return cost[grad][-1] * size / sizes[-1]
        return float(np.interp(size, sizes, cost[grad]))

    return seconds


@dataclass
class Measured:
    label: str
    seconds: float
    robust: int
    n: int
    floor: float | None = None
    note: str = ""

    def line(self) -> str:
        from audit.stats import wilson_interval

        low, high = wilson_interval(self.robust, self.n)
        ratio = f"{self.seconds / self.floor:.2f}" if self.floor else ""
        return f"| {self.label} | {self.robust / self.n:.3f} [{low:.3f}, {high:.3f}] | {self.seconds:.1f} | {ratio} | {self.note} |"


def _size(delta: np.ndarray, norm: str) -> np.ndarray:
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    return {"inf": np.abs(flat).max(1), "2": np.linalg.norm(flat, axis=1), "1": np.abs(flat).sum(1), "0": (flat != 0).sum(1)}[norm]


def _robust(target: "Target", x: np.ndarray, y: np.ndarray, x_adv: np.ndarray, eps: float, norm: str) -> tuple[int, str]:
    """Samples still classified correctly, counting an output outside the ball or the input range as broken-by-cheating (refused)."""
    size = _size(x_adv - x, norm)
    outside = int((size > eps * (1 + 1e-4) + 1e-6).sum() + ((x_adv < -1e-6) | (x_adv > 1 + 1e-6)).reshape(len(x), -1).any(1).sum())
    correct = target.predict(x_adv.astype(np.float32)) == y
    return int(correct.sum()), (f"{outside} outputs outside the ball or range" if outside else "")


def _timed(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    from audit.seeding import seed_everything

    seed_everything(0)
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def _kansa_run(attack: Any, target: "Target", x: np.ndarray, y: np.ndarray,
               cost: Callable[[int, bool], float]) -> tuple[float, dict[str, np.ndarray], float, str]:
    """Kansa's attack through its run (the path an audit takes): (seconds, per-sample arrays, floor seconds, passes made)."""
    from attacks.base import AttackContext
    from audit.models import Target
    from audit.seeding import seed_everything

    recorder = Recorder()
    recorded = Target(target.name, target.defense, recorder.module(target.module), target.input_shape, target.n_classes,
                      target.clip_values, target.output_kind, target.digest)
    seed_everything(0)
    start = time.perf_counter()
    output = attack.run(recorded, x, y, AttackContext(0, [str(c) for c in range(target.n_classes)]))
    seconds = time.perf_counter() - start
    floor = sum(cost(size, grad) for size, grad in recorder.passes)
    samples = sum(size for size, _ in recorder.passes)
    return seconds, output.per_sample, floor, f"{len(recorder.passes)} passes, {samples:,} sample evaluations"


def _kansa(attack: Any, target: "Target", x: np.ndarray, y: np.ndarray, eps: float,
           cost: Callable[[int, bool], float]) -> Measured:
    from attacks.base import ROBUST_AT

    seconds, per_sample, floor, note = _kansa_run(attack, target, x, y, cost)
    return Measured("Kansa (torch)", seconds, int(per_sample[f"{ROBUST_AT}{eps:g}"].sum()), len(y), floor, note)


def _min_norm_robust(x: np.ndarray, y: np.ndarray, x_adv: np.ndarray, target: "Target", eps: float, norm: str) -> int:
    size = _size(x_adv - x, norm)
    clean = target.predict(x) == y
    flipped = target.predict(x_adv.astype(np.float32)) != y
    return int((clean & ~(flipped & (size <= eps * (1 + 1e-4) + 1e-6))).sum())


def strong(samples: int, only: list[str] | None = None) -> None:
    """Every strong attack, or those whose label starts with one of `only`."""
    import torch

    from attacks.apgd import AutoPGD, art_apgd
    from attacks.autoattack import AutoAttack
    from attacks.blackbox import HopSkipJump, Square
    from attacks.minimum_norm import FMN

    target, x, y = _mnist_target(samples)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    cost = pass_costs(target.module, x, 9 * 128)
    clean = int((target.predict(x) == y).sum())
    print(f"\nMNIST CNN, {samples} test samples, clean accuracy {clean / samples:.3f}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
        print("(torchattacks not installed: its rows are skipped)")
    try:
        import foolbox
    except ImportError:
        foolbox = None
        print("(foolbox not installed: its rows are skipped)")

    def ta(build: Callable[[], Any]) -> Callable[[], np.ndarray]:
        return lambda: build()(tx, ty).detach().numpy()

    def art(build: Callable[[], Any]) -> Callable[[], np.ndarray]:
        return lambda: build().generate(x, y=y)

    module = target.module
    cases: list[tuple[str, float, str, Any, dict[str, Callable[[], np.ndarray]]]] = [
        ("APGD-CE L-inf, 100 steps", 0.1, "inf", AutoPGD(eps=[0.1], steps=100), {
            "ART": art(lambda: art_apgd(target, 0.1, "inf", "ce", 100, 1, 128)),
            "torchattacks": ta(lambda: torchattacks.APGD(module, norm="Linf", eps=0.1, steps=100, loss="ce", seed=0)),
        }),
        ("APGD-DLR L-inf, 100 steps", 0.1, "inf", AutoPGD(eps=[0.1], steps=100, loss="dlr"), {
            "ART": art(lambda: art_apgd(target, 0.1, "inf", "dlr", 100, 1, 128)),
            "torchattacks": ta(lambda: torchattacks.APGD(module, norm="Linf", eps=0.1, steps=100, loss="dlr", seed=0)),
        }),
        ("APGD-T L-inf, 9 targets x 100 steps", 0.1, "inf", AutoPGD(eps=[0.1], steps=100, loss="dlr", targets=9), {
            "torchattacks": ta(lambda: torchattacks.APGDT(module, norm="Linf", eps=0.1, steps=100, n_classes=10, seed=0)),
        }),
        ("APGD-CE L2, 100 steps", 2.0, "2", AutoPGD(eps=[2.0], norm="2", steps=100), {
            "ART": art(lambda: art_apgd(target, 2.0, "2", "ce", 100, 1, 128)),
            "torchattacks": ta(lambda: torchattacks.APGD(module, norm="L2", eps=2.0, steps=100, loss="ce", seed=0)),
        }),
        ("Square L-inf, 1000 queries", 0.1, "inf", Square(eps=[0.1], queries=1000), {
            "ART": art(lambda: Square(eps=[0.1], queries=1000).art_attack(target, 0.1)),
            "torchattacks": ta(lambda: torchattacks.Square(module, norm="Linf", eps=0.1, n_queries=1000, p_init=0.8, seed=0)),
        }),
        ("Square L2, 1000 queries", 2.0, "2", Square(eps=[2.0], norm="2", queries=1000), {
            "ART": art(lambda: Square(eps=[2.0], norm="2", queries=1000).art_attack(target, 2.0)),
            "torchattacks": ta(lambda: torchattacks.Square(module, norm="L2", eps=2.0, n_queries=1000, p_init=0.8, seed=0)),
        }),
        ("AutoAttack L-inf standard", 0.1, "inf", AutoAttack(eps=[0.1]), {
            "ART AutoAttack (its default cascade)": art(lambda: _art_autoattack(target, 0.1)),
            "torchattacks AutoAttack standard": ta(lambda: torchattacks.AutoAttack(module, norm="Linf", eps=0.1, version="standard",
                                                                                   n_classes=10, seed=0)),
        }),
    ]
    for label, eps, norm, attack, others in cases:
        if only and not any(label.startswith(prefix) for prefix in only):
            continue
        print(f"\n#### {label}, eps {eps:g}\n\n| implementation | robust accuracy [95% CI] | wall s | x floor | |\n| --- | --- | --- | --- | --- |")
        kansa = _kansa(attack, target, x, y, eps, cost)
        print(kansa.line(), flush=True)
        for name, run in others.items():
            if (name.startswith("torchattacks") and torchattacks is None):
                continue
            seconds, x_adv = _timed(run)
            robust, note = _robust(target, x, y, x_adv, eps, norm)
            print(Measured(name, seconds, robust, len(y), note=note).line(), flush=True)
            print(f"| (Kansa {seconds / kansa.seconds:.1f}x faster than {name}) | | | | |")
    fmn_eps = {"2": 1.0, "inf": 0.1, "1": 10.0, "0": 20.0}
    for norm, eps in fmn_eps.items():
        if only and not any(f"FMN L{norm}".startswith(prefix) for prefix in only):
            continue
        print(f"\n#### FMN L{norm}, 100 steps, robust accuracy read at eps {eps:g}\n\n"
              "| implementation | robust accuracy [95% CI] | wall s | x floor | |\n| --- | --- | --- | --- | --- |")
        kansa = _kansa(FMN(norm=norm, eps=[eps], steps=100), target, x, y, eps, cost)
        print(kansa.line(), flush=True)
        if foolbox is not None:
            attack = {"2": foolbox.attacks.L2FMNAttack, "inf": foolbox.attacks.LInfFMNAttack, "1": foolbox.attacks.L1FMNAttack,
                      "0": foolbox.attacks.L0FMNAttack}[norm](steps=100)
            fmodel = foolbox.PyTorchModel(module, bounds=(0, 1))
            seconds, x_adv = _timed(lambda: attack(fmodel, tx, ty, epsilons=None)[1].numpy())
            print(Measured("Foolbox", seconds, _min_norm_robust(x, y, x_adv, target, eps, norm), len(y)).line(), flush=True)
            print(f"| (Kansa {seconds / kansa.seconds:.1f}x faster than Foolbox) | | | | |")
    for norm, eps in {"2": 2.0, "inf": 0.2}.items():
        if only and not any(f"HopSkipJump L{norm}".startswith(prefix) for prefix in only):
            continue
        print(f"\n#### HopSkipJump L{norm}, 10 iterations, at most 1000 probes per estimate, robust accuracy read at eps {eps:g}\n\n"
              "| implementation | robust accuracy [95% CI] | wall s | x floor | |\n| --- | --- | --- | --- | --- |")
        hsj = HopSkipJump(norm=norm, eps=[eps], steps=10, max_queries=1000)
        kansa = _kansa(hsj, target, x, y, eps, cost)
        print(kansa.line(), flush=True)
        seconds, x_adv = _timed(lambda: HopSkipJump(norm=norm, eps=[eps], steps=10, max_queries=1000, backend="art").minimize(target, x, y))
        print(Measured("ART", seconds, _min_norm_robust(x, y, x_adv, target, eps, norm), len(y)).line(), flush=True)
        print(f"| (Kansa {seconds / kansa.seconds:.1f}x faster than ART) | | | | |")
        if foolbox is not None:
            attack = foolbox.attacks.HopSkipJumpAttack(steps=10, initial_gradient_eval_steps=100, max_gradient_eval_steps=1000,
                                                       constraint="l2" if norm == "2" else "linf")
            fmodel = foolbox.PyTorchModel(module, bounds=(0, 1))
            seconds, x_adv = _timed(lambda: attack(fmodel, tx, ty, epsilons=None)[1].numpy())
            print(Measured("Foolbox", seconds, _min_norm_robust(x, y, x_adv, target, eps, norm), len(y)).line(), flush=True)
            print(f"| (Kansa {seconds / kansa.seconds:.1f}x faster than Foolbox) | | | | |")
    if not only or any("APGD-CE L-inf sweep".startswith(prefix) for prefix in only):
        _apgd_sweep(target, x, y, cost, torchattacks)


SWEEP = [0.05, 0.1, 0.2, 0.3]


def _apgd_sweep(target: "Target", x: np.ndarray, y: np.ndarray, cost: Callable[[int, bool], float], torchattacks: Any) -> None:
    """APGD-CE over an audit's eps sweep: Kansa's one nested run against ART and torchattacks run once per eps (as they must be)."""
    import torch

    from attacks.apgd import AutoPGD, art_apgd
    from attacks.base import ROBUST_AT
    from audit.stats import wilson_interval

    def cells(robust: list[int]) -> str:
        return " | ".join(f"{r / len(y):.3f} [{wilson_interval(r, len(y))[0]:.3f}, {wilson_interval(r, len(y))[1]:.3f}]" for r in robust)

    print(f"\n#### APGD-CE L-inf sweep, 100 steps, eps {', '.join(f'{e:g}' for e in SWEEP)}\n\n"
          f"| implementation | {' | '.join(f'eps {e:g}' for e in SWEEP)} | wall s | x floor | |\n| --- |{' --- |' * (len(SWEEP) + 3)}")
    seconds, per_sample, floor, note = _kansa_run(AutoPGD(eps=SWEEP, steps=100), target, x, y, cost)
    print(f"| Kansa (torch) | {cells([int(per_sample[f'{ROBUST_AT}{e:g}'].sum()) for e in SWEEP])} | {seconds:.1f} | {seconds / floor:.2f} | {note} |", flush=True)
    others: dict[str, Callable[[float], np.ndarray]] = {"ART": lambda e: art_apgd(target, e, "inf", "ce", 100, 1, 128).generate(x, y=y)}
    if torchattacks is not None:
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        others["torchattacks"] = lambda e: torchattacks.APGD(target.module, norm="Linf", eps=e, steps=100, loss="ce", seed=0)(tx, ty).detach().numpy()
    for name, run in others.items():
        total, robust, notes = 0.0, [], []
        for e in SWEEP:
            spent, x_adv = _timed(lambda: run(e))
            total += spent
            count, note = _robust(target, x, y, x_adv, e, "inf")
            robust.append(count)
            notes += [note] if note else []
        print(f"| {name} | {cells(robust)} | {total:.1f} | | {'; '.join(notes)} |", flush=True)
        print(f"| (Kansa {total / seconds:.1f}x faster than {name}) |{' |' * (len(SWEEP) + 3)}")


def _art_autoattack(target: "Target", eps: float) -> Any:
    from art.attacks.evasion import AutoAttack as ArtAutoAttack

    return ArtAutoAttack(target.art_classifier, norm=np.inf, eps=eps, eps_step=2 * eps, batch_size=128)


def _mnist_target(samples: int) -> tuple["Target", np.ndarray, np.ndarray]:
    """The CNN the MNIST audits train (5 epochs on the train split of the 10,000 test images), and the first test samples."""
    import torch

    from audit.config import load_config
    from audit.data import load_dataset, split_dataset
    from audit.models import build_builtin, make_target, train

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.toml"
        path.write_text(MNIST_DATA + CNN + '[[attacks]]\nname = "fgsm"\n')
        config = load_config(path)
    dataset = load_dataset(config.data, config.base_dir, seed=0)
    splits = split_dataset(dataset, config.data["split"], seed=0)
    torch.manual_seed(0)
    module = build_builtin(config.models[0], dataset.input_shape, dataset.n_classes, dataset.is_image)
    train(module, dataset.x[splits.train], dataset.y[splits.train], config.models[0], seed=0, progress=False, label="cnn")
    index = splits.test[:samples]
    return make_target(module, dataset, "logits", "cnn"), dataset.x[index], dataset.y[index]


# --- whole audits -----------------------------------------------------------------------------------


def _audit(config_text: str) -> tuple[Any, float]:
    from audit import run_audit

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.toml"
        path.write_text(config_text)
        start = time.perf_counter()
        result = run_audit(path, history=False)
        return result, time.perf_counter() - start


def _robust_table(table: Any, attacks: list[str] | None = None) -> None:
    robust = table[(table["metric"] == "robust_accuracy") & (table["subset"] == "all")]
    seconds = table[table["metric"] == "attack_seconds"].groupby(["model", "attack"])["value"].sum()
    print("| model | attack | eps | robust accuracy [95% CI] | attack wall s |\n| --- | --- | --- | --- | --- |")
    for _, r in robust.iterrows():
        if attacks is None or r["attack"] in attacks:
            print(f"| {r['model']} | {r['attack']} | {r['param_value']:g} | {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                  f"{seconds.get((r['model'], r['attack']), float('nan')):.1f} |")


AUDIT = MNIST_DATA + """
[[models]]
name = "mlp"
architecture = "mlp"
epochs = 5
[[models]]
name = "cnn"
epochs = 5
[[models]]
name = "cnn-wide"
channels = [32, 64]
epochs = 5
[evaluation]
samples = SAMPLES
[[attacks]]
name = "fgsm"
[[attacks]]
name = "pgd"
steps = 40
[[attacks]]
name = "square"
queries = 300
[[attacks]]
name = "transfer"
"""


def audit(samples: int) -> None:
    """The whole audit's wall time, and the sanity checks' share of it (their cells' time, from the run's cell journal)."""
    result, wall = _audit(AUDIT.replace("SAMPLES", str(samples)))
    table = result.table
    attack_seconds = table[table["metric"] == "attack_seconds"]["value"].sum()
    checks = table[table["metric"] == "checks_seconds"]["value"].sum() if "checks_seconds" in set(table["metric"]) else float("nan")
    print(f"\n3-model MNIST audit, {samples} attacked samples: whole run {wall:.1f} s; attack cells {attack_seconds:.1f} s; "
          f"sanity checks {checks:.1f} s ({checks / wall:.0%} of the run)")
    _robust_table(table)
    flagged = table[(table["category"] == "sanity") & (table["value"] == 1.0)]
    print("\nsanity flags: " + ("; ".join(f"{r['model']}/{r['metric']}: {r['message']}" for _, r in flagged.iterrows()) or "none"))


L2_ATTACKS = """
[[attacks]]
id = "apgd-l2"
name = "apgd"
norm = "2"
eps = [1.0, 2.0]
[[attacks]]
id = "apgd-t-l2"
name = "apgd"
norm = "2"
loss = "dlr"
targets = 9
eps = [1.0, 2.0]
[[attacks]]
id = "fmn-l2"
name = "fmn"
eps = [1.0, 2.0]
[[attacks]]
name = "deepfool"
eps = [1.0, 2.0]
[[attacks]]
name = "cw"
eps = [1.0, 2.0]
[[attacks]]
id = "apgd-l2-art"
name = "apgd"
norm = "2"
backend = "art"
eps = [1.0, 2.0]
"""


def l2(samples: int) -> None:
    result, wall = _audit(MNIST_DATA + CNN + f"[evaluation]\nsamples = {samples}\n[checks]\nenabled = false\n" + L2_ATTACKS)
    print(f"\nMNIST CNN, L2, {samples} attacked samples (whole run {wall:.0f} s)\n")
    _robust_table(result.table)


ENSEMBLE = """
[[attacks]]
name = "fgsm"
eps = [0.1, 0.2]
[[attacks]]
name = "pgd"
eps = [0.1, 0.2]
[[attacks]]
id = "apgd-ce"
name = "apgd"
eps = [0.1, 0.2]
[[attacks]]
id = "apgd-t"
name = "apgd"
loss = "dlr"
targets = 9
eps = [0.1, 0.2]
[[attacks]]
name = "autoattack"
eps = [0.1, 0.2]
[[attacks]]
name = "square"
eps = [0.1, 0.2]
[[attacks]]
name = "transfer"
eps = [0.1, 0.2]
[[attacks]]
id = "apgd-l2"
name = "apgd"
norm = "2"
eps = [1.0, 2.0]
[[attacks]]
name = "fmn"
eps = [1.0, 2.0]
[[attacks]]
name = "deepfool"
eps = [1.0, 2.0]
[[attacks]]
name = "hopskipjump"
eps = [1.0, 2.0]
"""


def ensemble(samples: int) -> None:
    for label, text in (("digits CNN", '[data]\nsource = "digits"\n[[models]]\nname = "cnn"\n'),
                        ("MNIST CNN", MNIST_DATA + CNN + f"[evaluation]\nsamples = {samples}\n")):
        result, wall = _audit(text + ENSEMBLE)
        print(f"\n### {label} ({result.metadata.data.evaluation_samples} attacked samples; whole run {wall:.0f} s)\n")
        _robust_table(result.table)
        flagged = result.table[(result.table["category"] == "sanity") & (result.table["value"] == 1.0)]
        print(f"\n- sanity flags: {', '.join(flagged['metric']) or 'none'}")


def layout(samples: int) -> None:
    """A bare forward, and forward plus input-gradient backward, per sample: the module as trained vs `attack_layout`'s copy."""
    import torch

    from audit.models import attack_layout, build_builtin

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((4096, 1, 28, 28), dtype=np.float32)
    print(f"\nMNIST-shaped inputs, torch {torch.__version__}, {torch.get_num_threads()} threads; microseconds per sample (median of 7)\n")
    print("| model | batch | pass | NCHW weights | channels-last copy | ratio |\n| --- | --- | --- | --- | --- | --- |")
    for label, channels in (("cnn", [16, 32]), ("cnn-wide", [32, 64])):
        trained = build_builtin({"architecture": "cnn", "channels": channels}, (1, 28, 28), 10, True).eval()
        costs = {name: pass_costs(module, x, samples) for name, module in (("nchw", trained), ("last", attack_layout(trained)))}
        for size in (32, samples):
            for grad in (False, True):
                nchw, last = (1e6 * costs[k](size, grad) / size for k in ("nchw", "last"))
                print(f"| {label} | {size} | {'forward+backward' if grad else 'forward'} | {nchw:.0f} | {last:.0f} | {nchw / last:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("strong", "l2", "audit", "ensemble", "layout"))
    parser.add_argument("--samples", type=int)
    parser.add_argument("--only", help="strong: comma-separated label prefixes, e.g. 'APGD-CE,AutoAttack'")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    default = {"strong": 300, "l2": 500, "audit": 1000, "ensemble": 500, "layout": 128}[args.part]
    if args.part == "strong":
        strong(args.samples or default, args.only.split(",") if args.only else None)
    else:
        {"l2": l2, "audit": audit, "ensemble": ensemble, "layout": layout}[args.part](args.samples or default)


if __name__ == "__main__":
    main()
