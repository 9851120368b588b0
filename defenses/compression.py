"""Model compression ("lightweighting"): magnitude pruning, dynamic int8 quantization, distillation.

A compressed model is what ships, so it is audited like any other variant: a smaller model can
be less robust or leak differently, and the comparison shows whether it does.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import TYPE_CHECKING, Any

from audit.metrics import Category
from audit.models import build_builtin, logits_view, train
from audit.params import Choice, Number, Param
from audit.results import count_row
from audit.training import shuffled_batches, train_epochs
from defenses import register
from defenses.base import Defended, Defense, DefenseContext, DefenseError, note_row

if TYPE_CHECKING:
    import torch


def _prunable(module: "torch.nn.Module") -> list[tuple["torch.nn.Module", str]]:
    from torch import nn

    return [(layer, "weight") for layer in module.modules() if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]


@register
class Pruning(Defense):
    name = "pruning"
    stage = "compression"
    summary = "Global magnitude pruning (torch.nn.utils.prune): zero the smallest weights of every linear and conv layer"
    params = (
        Param("sparsity", Number(0, 1, closed="neither"), 0.5, "share of weights set to zero"),
        Param("finetune_epochs", Number(0, 10_000, integer=True), 0, "epochs of training with the pruning mask fixed, to recover accuracy"),
    )

    def apply(self, context: DefenseContext) -> Defended:
        from torch.nn.utils import prune

        sparsity = self.values["sparsity"]

        def prune_model(module: "torch.nn.Module") -> dict[str, Any]:
            layers = _prunable(module)
            if not layers:
                raise DefenseError("pruning: the model has no linear or conv layers to prune")
            start = time.perf_counter()
            prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
            if self.values["finetune_epochs"]:
                recipe = {**context.recipe, "epochs": self.values["finetune_epochs"]}
                view = logits_view(module, context.output_kind == "probabilities")
                train(view, context.train_x, context.train_y, recipe, context.seed, context.progress, f"{context.model_name} (pruned)",
                      device=context.device)
            for layer, attribute in layers:
                prune.remove(layer, attribute)
            return {"seconds": time.perf_counter() - start}

        def copy_of_base() -> "torch.nn.Module":
            return copy.deepcopy(context.base)

        if self.values["finetune_epochs"]:
            module, info = context.trained(self, prune_model, build=copy_of_base)
        else:
            module = copy_of_base()
            info = {**prune_model(module), "cached": False}
        rows = [note_row("sparsity", sparsity, f"{sparsity:.0%} of linear and conv weights are zero (global L1 magnitude)")]
        return Defended(module=module.eval(), output_kind=context.output_kind, rows=rows,
                        training_seconds=info["seconds"] if self.values["finetune_epochs"] else None, cached=info["cached"])


@register
class Quantization(Defense):
    name = "quantization"
    stage = "compression"
    summary = "Post-training dynamic int8 quantization of linear layers; white-box attacks use the float twin's gradients"

    def apply(self, context: DefenseContext) -> Defended:
        import torch

        start = time.perf_counter()
        with warnings.catch_warnings():  # torch deprecates its quantized tensors in favour of torchao
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(context.base).eval(), {torch.nn.Linear}, dtype=torch.qint8)
        seconds = time.perf_counter() - start
        layers = sum(1 for layer in quantized.modules() if isinstance(layer, torch.ao.nn.quantized.dynamic.Linear))
        if not layers:
            raise DefenseError("quantization: the model has no torch.nn.Linear layer to quantize dynamically")
        rows = [
            note_row("quantized_layers", layers, f"{layers} linear layer(s) hold int8 weights; other layers stay float32"),
            note_row("gradients_from_float_twin", 1, "quantized layers have no gradient: white-box attacks followed the float "
                     "model's gradients and their examples were judged on the quantized model (a transfer attack)"),
            count_row("compression_seconds", seconds, category=Category.COST),
        ]
        return Defended(module=quantized, output_kind=context.output_kind, gradient=(context.base, context.output_kind), rows=rows)


@register
class Distillation(Defense):
    name = "distillation"
    stage = "compression"
    summary = "Knowledge distillation (Hinton et al. 2015) into a smaller built-in student trained on the teacher's softened outputs"
    params = (
        Param("width", Number(0, 1, closed="right"), 0.5, "student layer widths as a share of the built-in defaults (or of the teacher's)"),
        Param("architecture", Choice(("auto", "cnn", "mlp")), "auto", "student architecture (auto: the teacher's built-in architecture, or cnn for images)"),
        Param("temperature", Number(0, 1000, closed="neither"), 4.0, "softmax temperature of the soft targets"),
        Param("soft_weight", Number(0, 1), 0.9, "weight of the soft-target loss; the rest is cross-entropy on true labels"),
        Param("epochs", Number(1, 10_000, integer=True), None, "training epochs (default: the model's)", quick=1),
    )

    def apply(self, context: DefenseContext) -> Defended:
        import torch

        recipe = context.recipe
        width = self.values["width"]
        student_cfg = {
            **recipe,
            "architecture": recipe["architecture"] if self.values["architecture"] == "auto" else self.values["architecture"],
            "hidden": [max(1, int(round(h * width))) for h in recipe["hidden"]],
            "channels": [max(1, int(round(c * width))) for c in recipe["channels"]],
            "epochs": self.values["epochs"] or recipe["epochs"],
        }
        dataset = context.dataset

        def build() -> "torch.nn.Module":
            torch.manual_seed(context.seed)
            return build_builtin(student_cfg, dataset.input_shape, dataset.n_classes, dataset.is_image)

        def fit(student: "torch.nn.Module") -> dict[str, Any]:
            teacher = logits_view(context.base, context.output_kind == "probabilities")
            student.to(context.device)
            x, y = torch.from_numpy(context.train_x).to(context.device), torch.from_numpy(context.train_y).to(context.device)
            with torch.no_grad():
                soft = torch.softmax(teacher(x) / self.values["temperature"], dim=1)
            t, w = self.values["temperature"], self.values["soft_weight"]
            generator = torch.Generator().manual_seed(context.seed)
            optimizer = torch.optim.Adam(student.parameters(), lr=recipe["learning_rate"], weight_decay=recipe["weight_decay"])
            def loss(idx: "torch.Tensor") -> "torch.Tensor":
                logits = student(x[idx])
                soft_loss = torch.nn.functional.kl_div(torch.log_softmax(logits / t, 1), soft[idx], reduction="batchmean") * t * t
                return w * soft_loss + (1 - w) * torch.nn.functional.cross_entropy(logits, y[idx])

            start = time.perf_counter()
            train_epochs(student, optimizer, student_cfg["epochs"], shuffled_batches(len(y), recipe["batch_size"], generator), loss)
            student.eval()
            return {"seconds": time.perf_counter() - start}

        student, info = context.trained(self, fit, build=build)
        rows = [note_row("student_width", width, f"student: {student_cfg['architecture']} at {width:g} x the widths, temperature {self.values['temperature']:g}")]
        return Defended(module=student, output_kind="logits", rows=rows, training_seconds=info["seconds"], cached=info["cached"])


