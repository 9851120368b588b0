"""Evaluation sanity checks: is a robustness number trustworthy, or an artefact of masked gradients?

After Athalye et al. 2018 ("Obfuscated Gradients") and Carlini et al. 2019 ("On Evaluating
Adversarial Robustness"). Each check is a result row (category "sanity", value 1 when flagged,
0 when it ran and found nothing) with what was observed in `message`. A flagged masking check
makes integrity gates on that model inconclusive unless a `[[waivers]]` entry gives a reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from attacks.base import ROBUST_AT, EvasionAttack
from attacks.evasion import PGD
from audit.data import stratified_subset
from audit.metrics import Category
from audit.params import Choice, Flag, Location, Number, Param, ParamSet, Text, as_written, optional_tables
from audit.results import rate_row

if TYPE_CHECKING:
    from attacks.base import Attack
    from audit.models import Target

MASKING_FLAGS = (
    "iterative_weaker_than_single_step",
    "not_monotonic_in_eps",
    "large_eps_not_reaching_chance",
    "min_norm_not_reaching_full_success",
    "black_box_stronger_than_white_box",
    "attack_no_better_than_noise",
    "vanishing_gradients",
    "not_converged",
    "checks_unfinished",
)
CHECKS_UNFINISHED = "checks_unfinished"  # the variant's finishing cell was ended (cell_timeout) or its process died
RANDOMIZED = "randomized_outputs"
FLAGS = (*MASKING_FLAGS, RANDOMIZED)

WAIVER_PARAMS = (
    Param("flag", Choice(FLAGS), doc="the sanity check to waive"),
    Param("model", Text(), "*", "model name, or * for every model"),
    Param("defense", Text(), "*", 'defense id of the variant, "none" for the undefended one, or * for every variant'),
    Param("reason", Text(), doc="why the flag does not invalidate the numbers; shown in the report"),
)
CHECKS_PARAMS = (
    Param("enabled", Flag(), True, "run the sanity checks (they cost a few extra attack passes)"),
    Param("eot_samples", Number(1, 256, integer=True), 8, "forward passes averaged (expectation over transformation) when a model's outputs are random"),
)
MIN_NORM_SUCCESS = 0.9
PROBE_SAMPLES = 500


def validate_waivers(tables: Any, where: Location) -> list[dict[str, Any]]:
    return [ParamSet(WAIVER_PARAMS).validate(t, where.child(i)) for i, t in enumerate(optional_tables(tables, where))]


def tolerance(n: int) -> float:
    """Paired comparisons on the same samples: differences of fewer than 3 samples (or 1%) are noise."""
    return max(3 / max(n, 1), 0.01)


def flag(check: str, flagged: bool, message: str, attack: str = "", eps: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"category": Category.SANITY, "metric": check, "value": 1.0 if flagged else 0.0, "attack": attack, "message": message}
    if eps is not None:
        row.update(param="eps", param_value=float(eps))
    return row


def apply_waivers(rows: list[dict[str, Any]], model: str, defense: str, waivers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The raised flags of one variant that a waiver names get status "waived" and the waiver's reason."""
    out = []
    for row in rows:
        waiver = next((w for w in waivers if w["flag"] == row["metric"] and w["model"] in ("*", model) and w["defense"] in ("*", defense)), None)
        if waiver is not None and row["value"] == 1.0:
            row = {**row, "status": "waived", "message": f"{row['message']}{WAIVED}{waiver['reason']})"}
        out.append(row)
    return out


WAIVED = " (waived: "


def waiver_reason(message: str) -> str:
    """The reason a waived row's message ends with (see `apply_waivers`)."""
    return message.rpartition(WAIVED)[2].removesuffix(")") if WAIVED in message else ""


# --- probes that run before the attacks -------------------------------------------------------


def probe_randomness(target: "Target", x: np.ndarray) -> bool:
    """Do identical calls give different outputs (a randomised defense or dropout left on)?"""
    sample = x[:64]
    return not np.allclose(target.logits(sample), target.logits(sample), rtol=0, atol=1e-6)


def probe_gradients(target: "Target", x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Input gradients of the margin (not the saturating cross-entropy) must be finite and non-zero."""
    import torch

    xt = torch.from_numpy(x[:256]).requires_grad_(True)
    logits = target.attack_module(xt)
    labels = torch.from_numpy(y[:256])
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf")).max(1).values
    (grad,) = torch.autograd.grad((true - other).sum(), xt)
    norms = grad.flatten(1).norm(dim=1).detach().numpy().astype(np.float64)
    nan = int((~np.isfinite(norms)).sum())
    vanishing = int((np.isfinite(norms) & (norms <= 1e-10)).sum())
    share = (nan + vanishing) / len(norms)
    message = f"{vanishing} of {len(norms)} samples have a zero input gradient and {nan} a NaN one ({share:.0%})"
    return flag("vanishing_gradients", share > 0.1, message)


# --- checks on the results, and probes that compare with them ----------------------------------


def _robust(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table["metric"] == "robust_accuracy") & (table["subset"] == "all") & (table["status"] == "ok")]


def table_checks(table: pd.DataFrame, attacks: dict[str, "Attack"]) -> list[dict[str, Any]]:
    """Checks that need only the numbers: ordering between attacks and along eps."""
    rows: list[dict[str, Any]] = []
    robust = _robust(table)
    value = {(r["attack"], r["param_value"]): (r["value"], int(r["n"])) for _, r in robust.iterrows()}
    for attack_id, attack in attacks.items():
        curve = sorted((eps, v) for (a, eps), v in value.items() if a == attack_id)
        if len(curve) >= 2:
            rises = [(e1, e2, v1[0], v2[0]) for (e1, v1), (e2, v2) in zip(curve, curve[1:]) if v2[0] - v1[0] > tolerance(v2[1])]
            message = "; ".join(f"robust accuracy rises from {a:.3f} at eps {e1:g} to {b:.3f} at eps {e2:g}" for e1, e2, a, b in rises)
            rows.append(flag("not_monotonic_in_eps", bool(rises), message or f"robust accuracy falls with eps over {len(curve)} values", attack_id))
        if attack.white_box and not attack.single_step:
            for single_id, single in attacks.items():
                if not single.single_step or single.norm != attack.norm:
                    continue
                for (eps, (v, n)) in curve:
                    if (single_id, eps) in value:
                        s = value[(single_id, eps)][0]
                        rows.append(flag("iterative_weaker_than_single_step", v - s > tolerance(n),
                                         f"{attack_id} {v:.3f} vs {single_id} {s:.3f} at eps {eps:g}", attack_id, eps))
    for attack_id, attack in attacks.items():
        if attack.white_box:
            continue
        for (a, eps), (v, n) in value.items():
            if a != attack_id:
                continue
            white = {w: value[(w, eps)][0] for w, other in attacks.items()
                     if other.white_box and other.norm == attack.norm and (w, eps) in value}
            if white:
                best = min(white, key=white.get)
                rows.append(flag("black_box_stronger_than_white_box", white[best] - v > tolerance(n),
                                 f"{attack_id} {v:.3f} vs the strongest white-box attack {best} {white[best]:.3f} at eps {eps:g}", attack_id, eps))
    success = table[(table["metric"] == "success_rate_unbounded") & (table["status"] == "ok")]
    for _, r in success.iterrows():
        rows.append(flag("min_norm_not_reaching_full_success", r["value"] < MIN_NORM_SUCCESS,
                         f"an unbounded minimum-norm attack flipped {r['value']:.1%} of the correctly classified samples", r["attack"]))
    return rows


def _noise(x: np.ndarray, eps: float, norm: str, rng: np.random.Generator, clip: tuple[float, float]) -> np.ndarray:
    """Random inputs at distance eps in `norm` (before clipping to the range); L0 sets eps randomly chosen values to random values in range."""
    flat = x.reshape(len(x), -1)
    if norm == "0":
        chosen = rng.random(flat.shape).argsort(axis=1)[:, : int(eps)]
        noisy = flat.copy()
        np.put_along_axis(noisy, chosen, rng.uniform(*clip, size=chosen.shape), axis=1)
        return noisy.reshape(x.shape).astype(np.float32)
    if norm == "inf":
        delta = eps * rng.choice([-1.0, 1.0], size=flat.shape)
    else:
        delta = rng.laplace(size=flat.shape) if norm == "1" else rng.standard_normal(flat.shape)
        delta *= eps / np.linalg.norm(delta, ord=float(norm), axis=1, keepdims=True)
    return np.clip(flat + delta, *clip).reshape(x.shape).astype(np.float32)


def probe_noise(target: "Target", x: np.ndarray, y: np.ndarray, table: pd.DataFrame, attacks: dict[str, "Attack"], seed: int) -> list[dict[str, Any]]:
    """Random noise of each eps as a baseline: an attack that does no better than noise is not attacking."""
    rng = np.random.default_rng(seed)
    robust = _robust(table)
    rows: list[dict[str, Any]] = []
    for norm in sorted({a.norm for a in attacks.values() if a.white_box}):
        ids = [i for i, a in attacks.items() if a.white_box and a.norm == norm]
        at_norm = robust[robust["attack"].isin(ids)]
        for eps, group in at_norm.groupby("param_value"):
            noisy = target.predict(_noise(x, eps, norm, rng, target.clip_values)) == y
            rows.append({**rate_row("noise_robust_accuracy", int(noisy.sum()), len(y), param="eps", param_value=float(eps)),
                         "category": Category.SANITY, "attack": f"noise-l{norm}"})
            best = group.loc[group["value"].idxmin()]
            rows.append(flag("attack_no_better_than_noise", best["value"] >= noisy.mean() - tolerance(len(y)),
                             f"strongest attack {best['attack']} {best['value']:.3f} vs random noise {noisy.mean():.3f} at eps {eps:g}",
                             best["attack"], eps))
    return rows


def probe_subsample(y: np.ndarray, seed: int) -> np.ndarray:
    """The samples the probes that attack again run on: a stratified draw of `PROBE_SAMPLES` of the attacked ones.

    Each of those probes decides one flag by a difference that must exceed `tolerance` (1% of the
    samples, at least 3): at 500 samples that is 5 samples, a resolution the decision needs, where
    attacking all of a large evaluation set again would cost as much as the audit itself.
    """
    return stratified_subset(np.arange(len(y)), y, PROBE_SAMPLES, seed)


def _of(subsample: np.ndarray, n: int) -> str:
    return "" if len(subsample) == n else f" (on a stratified subsample of {len(subsample)} of the {n} attacked samples)"


def probe_large_eps(target: "Target", x: np.ndarray, y: np.ndarray, n_classes: int, subsample: np.ndarray) -> dict[str, Any]:
    """With eps spanning the whole input range any input can become any other: accuracy must fall to chance."""
    low, high = target.clip_values
    xs, ys = x[subsample], y[subsample]
    x_adv = PGD(eps=high - low, steps=20, random_starts=1).perturb(target, xs, ys, high - low)
    accuracy = float((target.predict(x_adv) == ys).mean())
    return flag("large_eps_not_reaching_chance", accuracy > 1 / n_classes,
                f"PGD-20 at eps {high - low:g} (the whole input range) leaves robust accuracy {accuracy:.3f}; chance is {1 / n_classes:.3f}"
                + _of(subsample, len(y)))


def probe_convergence(target: "Target", x: np.ndarray, y: np.ndarray, table: pd.DataFrame, attacks: dict[str, "Attack"],
                      per_sample: dict[str, dict[str, np.ndarray]], subsample: np.ndarray) -> list[dict[str, Any]]:
    """A converged white-box attack must not become much stronger with more effort (each attack says what more effort is).

    The stronger attack runs only on the samples of the subsample that the configured one left robust
    (its per-sample results say which): what it breaks there is exactly what more effort adds.
    """
    robust = _robust(table)
    rows = []
    for attack_id, attack in attacks.items():
        if not attack.white_box or not isinstance(attack, EvasionAttack):
            continue
        curve = robust[robust["attack"] == attack_id]
        if curve.empty:
            continue
        middle = curve.loc[(curve["value"] - 0.5).abs().idxmin()]
        eps = float(middle["param_value"])
        stronger = attack.strengthened(eps)
        if stronger is None:
            continue
        survivors = subsample[per_sample[attack_id][f"{ROBUST_AT}{eps:g}"][subsample]]
        broken = int((target.predict(stronger.attack.perturb(target, x[survivors], y[survivors], eps)) != y[survivors]).sum()) if len(survivors) else 0
        share = broken / len(subsample)
        flagged = share > tolerance(len(subsample))
        rows.append(flag("not_converged", flagged,
                         f"{attack_id} at eps {eps:g} ({middle['value']:.3f} as configured): {stronger.how} breaks {broken} of the "
                         f"{len(survivors)} samples it left robust ({share:.1%} of the samples probed){_of(subsample, len(y))}"
                         + (f"; to measure with that effort, set {_settings(attack, stronger.attack)} in the attack {attack_id}" if flagged else ""),
                         attack_id, eps))
    return rows


def _settings(configured: "Attack", stronger: "Attack") -> str:
    """The parameters in which the stronger attack differs from the configured one, as config lines would set them."""
    changed = [(k, v) for k, v in stronger.values.items() if k != "eps" and configured.values.get(k) != v]
    return ", ".join(f"{k} = {as_written(v)}" for k, v in changed)


def masking_flags(table: pd.DataFrame, model: str, defense: str | None = None, status: str = "ok") -> pd.DataFrame:
    """Masking flags raised on one variant (every variant of `model` when `defense` is None).

    Unwaived ones (`status` "ok") make that variant's integrity numbers unreliable: its gates are
    inconclusive and the comparison leaves it off the Pareto front; `status = "waived"` gives those a waiver excused.
    """
    sanity = table[(table["category"] == Category.SANITY) & (table["model"] == model) & (table["status"] == status)]
    if defense is not None:
        sanity = sanity[sanity["defense"] == defense]
    return sanity[sanity["metric"].isin(MASKING_FLAGS) & (sanity["value"] == 1.0)]
