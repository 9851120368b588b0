"""Output post-processing defenses (ART): they change what the model reveals, not what it decides.

Two ART 1.20 bugs are guarded here. ClassLabels sets whole columns to 1 (every sample then
"predicts" every class that any sample predicted), so Kansa uses a corrected subclass.
ReverseSigmoid can flip predictions for some beta/gamma; every label-preserving post-processor is
checked on the test split and refused when it changes more predictions than allowed.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from audit.params import Number, Param
from defenses import register
from defenses.base import Defended, Defense, DefenseContext, DefenseError, note_row

if TYPE_CHECKING:
    import torch

MAX_CHANGE = Param("max_prediction_change", Number(0, 1), 0.01,
                   "refuse the defense when it changes more than this share of test predictions (label-preserving ones only)")


# Added to the log-probability of the model's own top class where post-processing left it tied with others;
# large enough to survive float32 beside log(1e-12), small enough to reveal nothing but the decision.
TIE_MARGIN = 1e-4


def break_ties(log_processed: np.ndarray, top1: np.ndarray) -> np.ndarray:
    """Where the original top class shares the maximum with others (rounding makes such ties), it wins the tie.

    Without this the argmax falls to the first tied class and a post-processor meant only to hide
    confidences changes decisions. A row whose original top class is not among the maxima is left
    alone: that is a changed decision, for the guard to count.
    """
    best = log_processed.max(axis=1)
    rows = np.arange(len(top1))
    tied = (log_processed == best[:, None]).sum(axis=1) > 1
    wins = tied & (log_processed[rows, top1] == best)
    out = log_processed.copy()
    out[rows[wins], top1[wins]] += TIE_MARGIN
    return out


def output_transform(inner: "torch.nn.Module", output_kind: str, transform: Callable[[np.ndarray], np.ndarray],
                     keep_decisions: bool = False) -> "torch.nn.Module":
    """The post-processed probabilities (as their log, so they act as logits); no gradient flows through.

    `keep_decisions`: ties the post-processing creates are broken toward the model's own top class.
    """
    import torch

    class OutputTransform(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                raw = self.inner(x)
                probabilities = torch.softmax(raw, dim=1) if output_kind == "logits" else raw
                processed = np.asarray(transform(probabilities.cpu().numpy().astype(np.float64)), dtype=np.float64)
                log_processed = np.log(np.clip(processed, 1e-12, None))
                if keep_decisions:
                    log_processed = break_ties(log_processed, raw.argmax(dim=1).cpu().numpy())
            return torch.from_numpy(log_processed).to(raw.device, raw.dtype)

    return OutputTransform().eval()


def prediction_change(before: np.ndarray, after: np.ndarray) -> float:
    """Share of samples whose top class differs (an all-equal output row counts as changed: it decides nothing)."""
    undecided = np.isclose(after.max(axis=1), after.min(axis=1))
    return float(((before.argmax(axis=1) != after.argmax(axis=1)) | undecided).mean())


def guard_labels(name: str, change: float, allowed: float) -> None:
    if change > allowed:
        raise DefenseError(
            f"{name} changes the predicted class of {change:.1%} of test samples (allowed: {allowed:.1%}); "
            "a post-processor meant to hide confidences must not change decisions: choose other parameters"
        )


class _Postprocessor(Defense):
    stage = "postprocessing"
    preserves_labels: ClassVar[bool] = True

    @abstractmethod
    def postprocessor(self) -> Any:
        """The ART post-processor (called on probabilities)."""

    def apply(self, context: DefenseContext) -> Defended:
        import torch

        art_postprocessor = self.postprocessor()
        module = output_transform(context.base, context.output_kind, art_postprocessor, keep_decisions=self.preserves_labels)
        x_test = torch.from_numpy(context.dataset.x[context.splits.test]).to(context.device)
        with torch.no_grad():
            before, after = context.base(x_test).cpu().numpy(), module(x_test).exp().cpu().numpy()
        change = prediction_change(before, after)
        if self.preserves_labels:
            guard_labels(self.name, change, self.values["max_prediction_change"])
        rows = [note_row("prediction_change_rate", change, "share of test predictions the post-processing changed or left undecided")]
        rows.append(note_row("gradients_from_raw_model", 1, "white-box attacks differentiated the model before post-processing; "
                             "their examples were judged on the post-processed outputs"))
        return Defended(module=module, output_kind="logits", gradient=(context.base, context.output_kind), rows=rows)


@register
class Rounded(_Postprocessor):
    name = "rounded"
    summary = "Round output probabilities to a few decimals (ART's Rounded)"
    params = (Param("decimals", Number(1, 10, integer=True), 2, "decimals kept (ART refuses 0)"), MAX_CHANGE)

    def postprocessor(self) -> Any:
        from art.defences.postprocessor import Rounded as ARTRounded

        return ARTRounded(decimals=self.values["decimals"])


def _one_hot_labels() -> Any:
    from art.defences.postprocessor import ClassLabels

    class CorrectedClassLabels(ClassLabels):
        """ART 1.20's ClassLabels writes `labels[:, argmax] = 1`, setting whole columns; set one entry per row."""

        def __call__(self, preds: np.ndarray) -> np.ndarray:
            labels = np.zeros_like(preds)
            if preds.shape[1] > 1:
                labels[np.arange(len(preds)), preds.argmax(axis=1)] = 1
            else:
                labels[preds > 0.5] = 1
            return labels

    return CorrectedClassLabels()


@register
class ClassLabelsOnly(_Postprocessor):
    name = "class_labels"
    summary = "Reveal only the top-1 label (ART's ClassLabels, with its 1.20 column bug corrected)"
    params = (MAX_CHANGE,)

    def postprocessor(self) -> Any:
        return _one_hot_labels()


@register
class HighConfidence(_Postprocessor):
    name = "high_confidence"
    preserves_labels = False
    summary = "Answer only above a confidence cutoff (ART's HighConfidence); the share left undecided is reported"
    params = (Param("cutoff", Number(0, 1, closed="neither"), 0.25, "probabilities below it are set to 0"),)

    def postprocessor(self) -> Any:
        from art.defences.postprocessor import HighConfidence as ARTHighConfidence

        return ARTHighConfidence(cutoff=self.values["cutoff"])


@register
class ReverseSigmoid(_Postprocessor):
    name = "reverse_sigmoid"
    summary = "Reverse sigmoid (Lee et al. 2019) through ART: perturb probabilities to mislead model stealing and inference"
    params = (
        Param("beta", Number(0, 100, closed="neither"), 1.0, "perturbation magnitude"),
        Param("gamma", Number(0, 100, closed="neither"), 0.1, "perturbation slope"),
        MAX_CHANGE,
    )

    def postprocessor(self) -> Any:
        from art.defences.postprocessor import ReverseSigmoid as ARTReverseSigmoid

        return ARTReverseSigmoid(beta=self.values["beta"], gamma=self.values["gamma"])
