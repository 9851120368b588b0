"""White-box gradient attacks, always on true labels: FGSM and PGD, and what torch-native attacks share.

FGSM and PGD run by default as a batched torch loop that takes ART's steps exactly (the gradient
of the mean cross-entropy; its sign, or for L2 the gradient over its per-sample norm; clipping to
the input range; projection onto the eps ball; ART's random start, drawn from numpy's global RNG as
ART draws it; a restart kept where it changes the clean prediction). It skips what ART adds around
those steps: numpy round trips per step, a success-rate log that predicts everything twice more,
and separate prediction passes for logits the attack already computed (the clean logits come from
the first gradient's forward when the attack starts at the clean input, and FGSM's one gradient
serves every eps of a sweep). `backend = "art"` runs ART itself, the reference the tests compare
against per sample.

PGD by default also stops a sample at the first step that misclassifies it and keeps that example
at every larger eps of the sweep (`early_stop`): a sample then counts as broken whenever ART's loop
passes through an adversarial point, not only when its last step is one, and the passes spent on
samples already broken are spared. `early_stop = false` gives ART's result per sample.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from attacks import register
from attacks.base import EvasionAttack, Stronger, SweepBatch
from attacks.tensors import per_sample
from audit.params import Choice, Flag, Number, Param

if TYPE_CHECKING:
    import torch

    from audit.models import Target


def art_norm(value: str) -> float:
    return np.inf if value == "inf" else 2.0


def _logits(module: "torch.nn.Module", x: "torch.Tensor") -> "torch.Tensor":
    import torch

    with torch.no_grad():
        return module(x)


def _logits_and_gradient(module: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """The logits at x and the input gradient of the mean cross-entropy, from one forward and one backward.

    The mean (as ART's loss) rather than the sum keeps the L2 step bitwise equal to ART's. Only the
    input gradient is asked for, so no parameter gradient is computed or stored; NaN entries become 0
    as in ART. The module is used as it is (eval mode, any wrapper): gradients follow whatever
    backward it defines.
    """
    import torch

    with torch.enable_grad():
        point = x.detach().requires_grad_(True)
        logits = module(point)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), point)
    return logits.detach(), grad.masked_fill_(grad.isnan(), 0.0)


def _direction(grad: "torch.Tensor", norm: str) -> "torch.Tensor":
    """The unit-norm steepest-ascent direction ART steps along: the sign for L-inf, grad / ||grad||_2 per sample for L2."""
    import torch

    if norm == "inf":
        return grad.sign()
    flat = grad.flatten(1)
    size = torch.linalg.vector_norm(flat, 2, dim=1, keepdim=True)
    # As ART: times the reciprocal (0 where the gradient is 0). Entries are within [-1, 1] except an infinite
    # gradient entry, which gives NaN, and ART's step zeroes NaN.
    return (flat * torch.where(size == 0, size, 1 / size)).nan_to_num_(nan=0.0).view_as(grad)


def _project(delta: "torch.Tensor", eps: float, norm: str) -> "torch.Tensor":
    """Project a perturbation onto the eps ball, as ART does (L2: rescale, with the factor in float64 like ART's)."""
    import torch

    if norm == "inf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1)
    size = torch.linalg.vector_norm(flat, 2, dim=1, keepdim=True).double()
    scale = torch.where(size == 0, 0.0, (eps / size).clamp(max=1.0))
    return (flat.double() * scale).to(delta.dtype).view_as(delta)


def _step(adv: "torch.Tensor", x: "torch.Tensor", direction: "torch.Tensor", eps: float, step: float, norm: str,
          clip: tuple[float, float]) -> "torch.Tensor":
    """One ART iteration: move `step` along `direction`, clip to the input range, project onto the ball around x."""
    moved = (adv + step * direction).clamp(*clip)
    return _project(moved - x, eps, norm) + x


def _random_start(x: "torch.Tensor", eps: float, norm: str, clip: tuple[float, float]) -> "torch.Tensor":
    """ART's random start: uniform in the ball (art.utils.random_sphere on numpy's global RNG), then clipped.

    Drawing it exactly as ART does (once per batch and restart, never per step) keeps the two backends
    identical per sample and leaves a seeded run's numbers unchanged by the choice of backend.
    """
    import torch
    from art.utils import random_sphere

    noise = random_sphere(len(x), int(np.prod(x.shape[1:])), eps, art_norm(norm)).reshape(x.shape).astype(np.float32)
    return (x + torch.from_numpy(noise)).clamp(*clip)


@dataclass(frozen=True)
class Views:
    """A target as the torch path uses it: `decide` gives the measured outputs, `differentiate` the gradients.

    They are one module unless the target borrows its gradients (`Target.gradient_module`: the raw
    model behind an output post-processor, a quantized model's float twin). When they are one, a
    gradient pass's forward doubles as a prediction; otherwise predictions take their own pass.
    """

    decide: "torch.nn.Module"
    differentiate: "torch.nn.Module"

    @property
    def shared(self) -> bool:
        return self.decide is self.differentiate


class TorchAttack(EvasionAttack):
    """An attack implemented as a batched torch sweep: tensors in, tensors out, no numpy round trip per step."""

    @abstractmethod
    def torch_sweep(self, model: Views, x: "torch.Tensor", y: "torch.Tensor", eps: list[float],
                    clip: tuple[float, float]) -> tuple["torch.Tensor", list["torch.Tensor"], list["torch.Tensor"]]:
        """(clean logits, adversarial inputs per eps, their logits per eps) for one batch, in torch."""

    def sweep_batch(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: list[float]) -> SweepBatch:
        import torch

        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
        model = Views(target.module, target.attack_module)
        clean, x_adv, adv_logits = self.torch_sweep(model, xt, yt, eps, target.clip_values)
        return SweepBatch(clean.numpy(), [a.numpy() for a in x_adv], [logits.numpy() for logits in adv_logits])

    def perturb(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        """Adversarial versions of x (for callers outside the sweep: the sanity checks, the transfer attack).

        It runs `sweep_batch` per batch and drops its logits, a pass these callers make themselves.
        """
        batch = self.values["batch_size"]
        return np.concatenate([self.sweep_batch(target, x[i : i + batch], y[i : i + batch], [eps]).x_adv[0]
                               for i in range(0, len(x), batch)])


class TorchOrArt(TorchAttack):
    """An attack with two implementations: a batched torch loop (default) and ART's (the reference), chosen by `backend`."""

    @abstractmethod
    def art_attack(self, target: "Target", eps: float) -> Any:
        """The ART attack object for `eps`."""

    def sweep_batch(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: list[float]) -> SweepBatch:
        """The torch path on one batch; on ART, the base's predict, `perturb` per eps, predict."""
        if self.values["backend"] == "art":
            return EvasionAttack.sweep_batch(self, target, x, y, eps)
        return super().sweep_batch(target, x, y, eps)

    def perturb(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        if self.values["backend"] == "art":
            return self.art_attack(target, eps).generate(x, y=y)
        return super().perturb(target, x, y, eps)


def nested_sweep(model: Views, x: "torch.Tensor", y: "torch.Tensor", eps: list[float],
                 attack: "Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]"
                 ) -> tuple["torch.Tensor", list["torch.Tensor"], list["torch.Tensor"]]:
    """An eps sweep, smallest eps first, in which a sample broken at one eps keeps its adversarial example at every larger eps.

    A point inside a ball is inside every larger ball of the same norm, so this is exact, and only the
    samples still robust are attacked again. `attack(robust, eps)` attacks the samples marked robust and
    returns (still robust, adversarial inputs); the result is `torch_sweep`'s, in the order of `eps`.
    """
    import torch

    clean = _logits(model.decide, x)
    robust, current = clean.argmax(1) == y, x
    results: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    for e in sorted(set(eps)):
        still, found = attack(robust, e)
        current = torch.where(per_sample(robust & ~still, x), found, current)
        logits = _logits(model.decide, current)
        robust = still & (logits.argmax(1) == y)
        results[e] = (current, logits)
    return clean, [results[e][0] for e in eps], [results[e][1] for e in eps]


def more_steps_and_a_restart(attack: EvasionAttack, eps: float) -> Stronger:
    """Twice the steps and one more random start: what more effort means for PGD-like attacks."""
    values = attack.values
    stronger = type(attack)(**{**values, "eps": [eps], "steps": 2 * values["steps"], "random_starts": values["random_starts"] + 1})
    return Stronger(stronger, f"{2 * values['steps']} steps and {values['random_starts'] + 1} random starts "
                              f"instead of {values['steps']} and {values['random_starts']}")


BACKEND = Param("backend", Choice(("torch", "art")), "torch",
                "torch: a batched torch loop taking ART's exact steps with fewer passes; art: ART itself (the reference)")


@register
class FGSM(TorchOrArt):
    name = "fgsm"
    single_step = True
    summary = "Fast gradient sign method (Goodfellow et al. 2015): one gradient step of size eps"
    params = (*EvasionAttack.params, BACKEND)

    @property
    def nests_sweep(self) -> bool:
        """One gradient serves every eps, so nesting would spare nothing; each eps stays ART's result per sample."""
        return False

    def art_attack(self, target: "Target", eps: float) -> Any:
        from art.attacks.evasion import FastGradientMethod

        return FastGradientMethod(target.art_classifier, norm=art_norm(self.norm), eps=eps, eps_step=eps, batch_size=self.values["batch_size"])

    def torch_sweep(self, model: Views, x: "torch.Tensor", y: "torch.Tensor", eps: list[float],
                    clip: tuple[float, float]) -> tuple["torch.Tensor", list["torch.Tensor"], list["torch.Tensor"]]:
        """One forward and backward give the clean logits and the direction for every eps; then one forward per eps."""
        logits, grad = _logits_and_gradient(model.differentiate, x, y)
        direction = _direction(grad, self.norm)
        x_adv = [_step(x, x, direction, e, e, self.norm, clip) for e in eps]
        clean = logits if model.shared else _logits(model.decide, x)
        return clean, x_adv, [_logits(model.decide, a) for a in x_adv]


@register
class PGD(TorchOrArt):
    name = "pgd"
    randomized = True
    summary = "Projected gradient descent (Madry et al. 2018): iterated steps projected back into the eps ball"
    params = (
        *EvasionAttack.params,
        Param("steps", Number(1, 10_000, integer=True), 40, "gradient steps per start", quick=3),
        Param("step_size", Number(0, 10, closed="neither"), None, "step as a fraction of eps (default 2.5 / steps)"),
        Param("random_starts", Number(0, 100, integer=True), 3,
              "random starts in the ball, each on the samples no earlier one broke (with early_stop); 0 starts at the clean input. "
              "Default 3: with 1 the convergence check flags normally trained digits and MNIST CNNs (bench/RESULTS.md)"),
        Param("early_stop", Flag(), True,
              "stop a sample at the first step that misclassifies it and keep that example, at this eps and every larger one "
              "(never weaker than ART's last step, and faster); false: ART's result per sample"),
        BACKEND,
    )

    @property
    def nests_sweep(self) -> bool:
        return bool(self.values["early_stop"])

    def step(self, eps: float) -> float:
        return eps * (self.values["step_size"] or 2.5 / self.values["steps"])

    def strengthened(self, eps: float) -> Stronger:
        return more_steps_and_a_restart(self, eps)

    def art_attack(self, target: "Target", eps: float) -> Any:
        from art.attacks.evasion import ProjectedGradientDescent

        return ProjectedGradientDescent(
            target.art_classifier,
            norm=art_norm(self.norm),
            eps=eps,
            eps_step=self.step(eps),
            max_iter=self.values["steps"],
            num_random_init=self.values["random_starts"],
            batch_size=self.values["batch_size"],
            verbose=False,
        )

    def torch_sweep(self, model: Views, x: "torch.Tensor", y: "torch.Tensor", eps: list[float],
                    clip: tuple[float, float]) -> tuple["torch.Tensor", list["torch.Tensor"], list["torch.Tensor"]]:
        """With `early_stop`, a nested sweep of `_stopping`. Otherwise ART's loop, per eps: without random starts the first step is
        at x for every eps, so its forward gives the clean logits and its gradient every eps's first step.

        With several starts, a later start's result is kept where the differentiated model's prediction
        differs from its clean prediction (ART's rule: it compares with the clean prediction, not the label).
        """
        if self.values["early_stop"]:
            return nested_sweep(model, x, y, eps, lambda robust, e: self._stopping(model, x, y, robust, e, clip))
        starts = self.values["random_starts"]
        first = clean_pred = None
        if starts:
            clean = _logits(model.decide, x)
            if starts > 1:
                clean_pred = (clean if model.shared else _logits(model.differentiate, x)).argmax(1)
        else:
            logits, grad = _logits_and_gradient(model.differentiate, x, y)
            first = _direction(grad, self.norm)
            clean = logits if model.shared else _logits(model.decide, x)
        results = [self._attack(model, x, y, clean_pred, e, first, clip) for e in eps]
        return clean, [adv for adv, _ in results], [logits for _, logits in results]

    def _attack(self, model: Views, x: "torch.Tensor", y: "torch.Tensor", clean_pred: "torch.Tensor | None", eps: float,
                first: "torch.Tensor | None", clip: tuple[float, float]) -> tuple["torch.Tensor", "torch.Tensor"]:
        """ART's PGD on one batch at one eps: the adversarial inputs and their logits.

        Beyond the steps, one forward per start (the differentiated model's, when it also decides or
        several starts are compared), plus one of the deciding model when the two differ.
        """
        import torch

        kept = self._start(model.differentiate, x, y, eps, first, clip)
        kept_logits = _logits(model.differentiate, kept) if model.shared or clean_pred is not None else None
        for _ in range(1, self.values["random_starts"]):
            adv = self._start(model.differentiate, x, y, eps, first, clip)
            logits = _logits(model.differentiate, adv)
            changed = logits.argmax(1) != clean_pred
            kept = torch.where(per_sample(changed, x), adv, kept)
            kept_logits = torch.where(changed[:, None], logits, kept_logits)
        if not model.shared:
            return kept, _logits(model.decide, kept)
        assert kept_logits is not None  # computed above whenever the views are shared
        return kept, kept_logits

    def _stopping(self, model: Views, x: "torch.Tensor", y: "torch.Tensor", robust: "torch.Tensor", eps: float,
                  clip: tuple[float, float]) -> tuple["torch.Tensor", "torch.Tensor"]:
        """PGD on the samples marked `robust`, each left at the first point the deciding model misclassifies: (still robust, adversarial inputs).

        A sample's steps do not depend on the others' (the mean loss's scale drops out of the sign and of
        the L2 direction), so until it is broken it takes the steps it takes in ART's loop; later starts
        run only on the samples no earlier start broke.
        """
        still, adversarial, step = robust.clone(), x.clone(), self.step(eps)
        for _ in range(max(1, self.values["random_starts"])):
            live = still.nonzero().squeeze(1)
            if not len(live):
                break
            origin, labels = x[live], y[live]
            adv = _random_start(origin, eps, self.norm, clip) if self.values["random_starts"] else origin
            for i in range(self.values["steps"] + 1):
                if i == self.values["steps"]:
                    decided = _logits(model.decide, adv)
                else:
                    logits, grad = _logits_and_gradient(model.differentiate, adv, labels)
                    decided = logits if model.shared else _logits(model.decide, adv)
                broken = decided.argmax(1) != labels
                adversarial[live] = adv
                still[live[broken]] = False
                if i == self.values["steps"] or broken.all():
                    break
                keep = ~broken
                live, origin, labels, adv = live[keep], origin[keep], labels[keep], adv[keep]
                adv = _step(adv, origin, _direction(grad[keep], self.norm), eps, step, self.norm, clip)
        return still, adversarial

    def _start(self, module: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", eps: float, first: "torch.Tensor | None",
               clip: tuple[float, float]) -> "torch.Tensor":
        """One start: `steps` steps from a random point of the ball, or from x (whose first direction is `first`)."""
        adv, step = (_random_start(x, eps, self.norm, clip) if self.values["random_starts"] else x), self.step(eps)
        for i in range(self.values["steps"]):
            direction = first if i == 0 and first is not None else _direction(_logits_and_gradient(module, adv, y)[1], self.norm)
            adv = _step(adv, x, direction, eps, step, self.norm, clip)
        return adv

