"""Training-time defenses: adversarial training (through ART's trainers), DP-SGD (Opacus), regularisation.

Each trains the model's architecture with its own recipe from a fresh initialisation (a loaded
model is fine-tuned from its weights instead) and goes through the weight cache, so a re-run
never trains again.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import numpy as np

from audit.models import logits_view, train
from audit.params import Choice, Location, Number, Param
from audit.seeding import seed_everything
from audit.training import train_epochs
from defenses import register
from defenses.base import Defended, Defense, DefenseContext, DefenseError, note_row

if TYPE_CHECKING:
    import torch

EPOCHS = Param("epochs", Number(1, 10_000, integer=True), None, "training epochs (default: the model's)", quick=1)
BATCH = Param("batch_size", Number(1, 1_000_000, integer=True), None, "training batch size (default: the model's)")
EPS = Param("eps", Number(0, None, closed="neither"), 0.1, "L-inf radius of the training perturbations")


def _training_recipe(values: dict[str, Any], context: DefenseContext) -> dict[str, Any]:
    return {**context.recipe, "epochs": values.get("epochs") or context.recipe["epochs"],
            "batch_size": values.get("batch_size") or context.recipe["batch_size"]}


def _variant(module: "torch.nn.Module", info: dict[str, Any], context: DefenseContext, rows: list[dict[str, Any]]) -> Defended:
    return Defended(module=module, output_kind=context.output_kind, rows=rows,
                    training_seconds=info["seconds"], cached=info["cached"])


class _ARTTrainer(Defense):
    """Adversarial training through one of ART's trainers; subclasses build the trainer."""

    stage = "training"
    one_hot: ClassVar[bool] = False
    optimizer: ClassVar[str] = "adam"

    @abstractmethod
    def trainer(self, classifier: Any, context: DefenseContext, recipe: dict[str, Any]) -> Any:
        """The ART trainer around `classifier` (a PyTorchClassifier holding the optimiser)."""

    def apply(self, context: DefenseContext) -> Defended:
        recipe = _training_recipe(self.values, context)

        def fit(module: "torch.nn.Module") -> dict[str, Any]:
            import torch
            from art.estimators.classification import PyTorchClassifier


            seed_everything(context.seed)
            view = logits_view(module, context.output_kind == "probabilities")
            if self.optimizer == "sgd":
                optimizer = torch.optim.SGD(module.parameters(), lr=recipe["learning_rate"], momentum=0.9)
            else:
                optimizer = torch.optim.Adam(module.parameters(), lr=recipe["learning_rate"], weight_decay=recipe["weight_decay"])
            classifier = PyTorchClassifier(
                model=view, loss=torch.nn.CrossEntropyLoss(), optimizer=optimizer,
                input_shape=context.dataset.input_shape, nb_classes=context.dataset.n_classes,
                clip_values=context.dataset.input_range, device_type="gpu" if context.device == "cuda" else "cpu",
            )
            y = context.train_y
            if self.one_hot:
                y = np.eye(context.dataset.n_classes, dtype=np.float32)[y]
            start = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):  # ART's trainers draw progress bars with no switch
                self.trainer(classifier, context, recipe).fit(context.train_x, y, batch_size=recipe["batch_size"], nb_epochs=recipe["epochs"])
            module.eval()
            return {"seconds": time.perf_counter() - start}

        module, info = context.trained(self, fit)
        return _variant(module, info, context, [note_row("training_eps", self.values["eps"], f"trained against L-inf eps {self.values['eps']:g}")])


def _pgd(classifier: Any, eps: float, steps: int, batch_size: int) -> Any:
    from art.attacks.evasion import ProjectedGradientDescent

    return ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=eps * 2.5 / steps, max_iter=steps,
                                    num_random_init=1, batch_size=batch_size, verbose=False)


STEPS = Param("steps", Number(1, 1_000, integer=True), 7, "PGD steps per training batch", quick=2)


@register
class AdversarialTraining(_ARTTrainer):
    name = "adversarial_training"
    summary = "ART's AdversarialTrainer: replace a share of every batch with FGSM or PGD examples"
    params = (
        Param("attack", Choice(("fgsm", "pgd")), "pgd", "attack that makes the training examples"),
        EPS,
        Param("ratio", Number(0, 1, closed="right"), 0.5, "share of each batch replaced by adversarial examples"),
        STEPS,
        EPOCHS,
        BATCH,
    )

    def trainer(self, classifier: Any, context: DefenseContext, recipe: dict[str, Any]) -> Any:
        from art.attacks.evasion import FastGradientMethod
        from art.defences.trainer import AdversarialTrainer

        eps = self.values["eps"]
        if self.values["attack"] == "fgsm":
            attack = FastGradientMethod(classifier, norm=np.inf, eps=eps, eps_step=eps, batch_size=recipe["batch_size"])
        else:
            attack = _pgd(classifier, eps, self.values["steps"], recipe["batch_size"])
        return AdversarialTrainer(classifier, attack, ratio=self.values["ratio"])


@register
class MadryPGD(_ARTTrainer):
    name = "madry_pgd"
    summary = "Madry et al. 2018 through ART: train on PGD examples only"
    params = (EPS, STEPS, EPOCHS, BATCH)

    def trainer(self, classifier: Any, context: DefenseContext, recipe: dict[str, Any]) -> Any:
        from art.defences.trainer import AdversarialTrainerMadryPGD

        eps, steps = self.values["eps"], self.values["steps"]
        return AdversarialTrainerMadryPGD(classifier, nb_epochs=recipe["epochs"], batch_size=recipe["batch_size"],
                                          eps=eps, eps_step=eps * 2.5 / steps, max_iter=steps, num_random_init=1)


@register
class TRADES(_ARTTrainer):
    name = "trades"
    summary = "TRADES (Zhang et al. 2019) through ART: clean loss plus beta x KL to the PGD example's output"
    params = (EPS, STEPS, Param("beta", Number(0, 100, closed="neither"), 6.0, "weight of the robustness term"), EPOCHS, BATCH)

    def trainer(self, classifier: Any, context: DefenseContext, recipe: dict[str, Any]) -> Any:
        from art.defences.trainer import AdversarialTrainerTRADESPyTorch

        attack = _pgd(classifier, self.values["eps"], self.values["steps"], recipe["batch_size"])
        return AdversarialTrainerTRADESPyTorch(classifier, attack, beta=self.values["beta"])


@register
class FastIsBetterThanFree(_ARTTrainer):
    name = "fbf"
    summary = "Fast is better than free (Wong et al. 2020) through ART: FGSM from a random start, cyclic SGD schedule"
    params = (EPS, EPOCHS, BATCH)
    one_hot = True  # ART's FBF trainer indexes one-hot labels
    optimizer = "sgd"  # its cyclic schedule (peak 0.21) is an SGD learning rate

    def trainer(self, classifier: Any, context: DefenseContext, recipe: dict[str, Any]) -> Any:
        from art.defences.trainer import AdversarialTrainerFBFPyTorch

        return AdversarialTrainerFBFPyTorch(classifier, eps=self.values["eps"])


@register
class DPSGD(Defense):
    name = "dp_sgd"
    stage = "training"
    summary = "Differentially private SGD (Abadi et al. 2016) through Opacus: per-sample clipping plus Gaussian noise"
    params = (
        Param("target_epsilon", Number(0, None, closed="neither"), None, "privacy budget to reach (give this or noise_multiplier)"),
        Param("noise_multiplier", Number(0, None, closed="neither"), None, "noise std / clip norm (give this or target_epsilon)", quick=1.0),
        Param("delta", Number(0, 1, closed="neither"), None, "privacy delta (default: 1 / (10 x training samples))"),
        Param("max_grad_norm", Number(0, None, closed="neither"), 1.0, "per-sample gradient clip norm"),
        EPOCHS,
        BATCH,
        Param("learning_rate", Number(0, 10, closed="right"), 0.01, "Adam step size: noisy, clipped gradients need a larger step than plain training"),
    )

    @classmethod
    def check(cls, values: dict[str, Any], where: Location) -> None:
        if (values["target_epsilon"] is None) == (values["noise_multiplier"] is None):
            raise where.error("give exactly one of target_epsilon and noise_multiplier")

    def apply(self, context: DefenseContext) -> Defended:
        recipe = _training_recipe(self.values, context)
        samples = len(context.train_y)
        delta = self.values["delta"] or 1.0 / (10 * samples)
        if delta >= 1.0 / samples:
            raise DefenseError(f"dp_sgd: delta {delta:g} is not below 1 / training samples ({samples}), so it guarantees nothing")

        def fit(module: "torch.nn.Module") -> dict[str, Any]:
            import torch
            from opacus import PrivacyEngine
            from opacus.validators import ModuleValidator


            problems = ModuleValidator.validate(module, strict=False)
            if problems:
                raise DefenseError(f"dp_sgd: Opacus cannot train this architecture: {'; '.join(str(p) for p in problems)[:300]}")
            seed_everything(context.seed)
            view = logits_view(module, context.output_kind == "probabilities").train()
            data = torch.utils.data.TensorDataset(torch.from_numpy(context.train_x), torch.from_numpy(context.train_y))
            loader = torch.utils.data.DataLoader(data, batch_size=recipe["batch_size"], shuffle=True,
                                                 generator=torch.Generator().manual_seed(context.seed))
            optimizer = torch.optim.Adam(module.parameters(), lr=self.values["learning_rate"])
            start = time.perf_counter()
            with warnings.catch_warnings():  # Opacus warns of its insecure RNG (wanted: seeded) and of hook internals
                warnings.simplefilter("ignore")
                engine = PrivacyEngine(secure_mode=False)
                common = dict(module=view, optimizer=optimizer, data_loader=loader, max_grad_norm=self.values["max_grad_norm"])
                if self.values["target_epsilon"] is not None:
                    private, optimizer, loader = engine.make_private_with_epsilon(
                        **common, target_epsilon=self.values["target_epsilon"], target_delta=delta, epochs=recipe["epochs"])
                else:
                    private, optimizer, loader = engine.make_private(**common, noise_multiplier=self.values["noise_multiplier"])
                loss_fn = torch.nn.CrossEntropyLoss()

                def nonempty() -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
                    return (batch for batch in loader if len(batch[1]))  # Poisson sampling can draw an empty batch

                train_epochs(private, optimizer, recipe["epochs"], nonempty, lambda batch: loss_fn(private(batch[0]), batch[1]))
                epsilon = float(engine.get_epsilon(delta))
            module.eval()
            return {"seconds": time.perf_counter() - start, "epsilon": epsilon, "delta": delta,
                    "noise_multiplier": float(optimizer.noise_multiplier)}

        module, info = context.trained(self, fit)
        rows = [
            note_row("dp_epsilon", info["epsilon"], f"(epsilon, delta) = ({info['epsilon']:.3g}, {info['delta']:.2g}) by Opacus' RDP accountant"),
            note_row("dp_delta", info["delta"]),
            note_row("noise_multiplier", info["noise_multiplier"]),
            note_row("max_grad_norm", self.values["max_grad_norm"]),
        ]
        return _variant(module, info, context, rows)


@register
class Regularization(Defense):
    name = "regularization"
    stage = "training"
    summary = "Weight decay, label smoothing and early stopping: less overfitting, so less membership leakage"
    params = (
        Param("weight_decay", Number(0, 1), 5e-4, "L2 penalty"),
        Param("label_smoothing", Number(0, 1, closed="left"), 0.1, "share of each target spread over the other classes"),
        Param("patience", Number(1, 10_000, integer=True), None, "stop after this many epochs without a better validation loss (default: no early stopping)"),
        Param("validation_fraction", Number(0, 0.5, closed="neither"), 0.1, "share of the training split held out for early stopping"),
        EPOCHS,
        BATCH,
    )

    def apply(self, context: DefenseContext) -> Defended:
        recipe = {**_training_recipe(self.values, context), "weight_decay": self.values["weight_decay"]}

        def fit(module: "torch.nn.Module") -> dict[str, Any]:
            x, y = context.train_x, context.train_y
            validation = None
            if self.values["patience"] is not None:
                held = np.random.default_rng(context.seed).permutation(len(y))
                cut = max(1, int(len(y) * self.values["validation_fraction"]))
                validation, x, y = (x[held[:cut]], y[held[:cut]]), x[held[cut:]], y[held[cut:]]
            view = logits_view(module, context.output_kind == "probabilities")
            seconds = train(view, x, y, recipe, context.seed, context.progress, f"{context.model_name} ({self.name})",
                            label_smoothing=self.values["label_smoothing"], validation=validation, patience=self.values["patience"],
                            device=context.device)
            return {"seconds": seconds}

        module, info = context.trained(self, fit)
        return _variant(module, info, context, [note_row("weight_decay", self.values["weight_decay"]),
                                                note_row("label_smoothing", self.values["label_smoothing"])])
