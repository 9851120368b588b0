"""Attribute inference: does the model's output reveal a sensitive feature of a record beyond what the rest reveals?

The attacker knows a record's other features and the model's prediction for it, and guesses
the sensitive one (ART AttributeInferenceBlackBox). Two yardsticks keep the number honest: the
majority value, and ART's baseline attack, the same attack model trained without the target's
predictions. Only the difference is leakage through the model. Records of the training split
(members) and of the hold-out split (non-members) are attacked separately: higher accuracy on
members means the model leaks its training records in particular.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from attacks import register
from attacks.base import Access, Attack, AttackContext, AttackKind, AttackOutput
from attacks.membership import check_protocol, draw_protocol, protocol_params, target_view
from audit.errors import KansaError
from audit.params import AnyOf, Choice, Location, Number, Param, Text
from audit.results import count_row, mean_row, rate_row
from audit.seeding import seed_everything

if TYPE_CHECKING:
    from audit.data import Dataset, Splits
    from audit.models import Target

# More distinct values than this and the feature is not categorical: accuracy would not be the right measure.
MAX_VALUES = 20


@register
class AttributeInference(Attack):
    name = "attribute_inference"
    kind = AttackKind.ATTRIBUTE
    access = Access.LABELS
    needs_members = True
    emits = ("attribute_accuracy", "attribute_accuracy_baseline", "attribute_accuracy_majority", "attribute_gain", "attacker_samples", "feature_values")
    summary = "ART AttributeInferenceBlackBox on a declared sensitive (categorical) feature, against the majority value and a model-free baseline"
    data_kinds = ("tabular",)
    data_note = "the sensitive attribute is one column of a row of features"
    params = (
        Param("feature", AnyOf((Text(), Number(0, None, integer=True))),
              doc="the sensitive feature: its column name in a tabular source, or its index (from 0) among the model's inputs", quick=0),
        Param("attack_model", Choice(("rf", "gb", "lr", "dt", "knn", "nn")), "rf", "ART's attack model type, used by both attack and baseline"),
        protocol_params()[0],
    )

    @classmethod
    def check_data(cls, values: dict[str, Any], dataset: "Dataset", splits: "Splits", where: Location) -> None:
        super().check_data(values, dataset, splits, where)
        check_protocol(cls.name, values, splits, where)
        try:
            feature = dataset.feature_index(values["feature"])
        except ValueError as exc:
            raise where.child("feature").error(str(exc)) from None
        distinct = len(np.unique(dataset.x[:, feature]))
        if distinct > MAX_VALUES:
            raise where.child("feature").error(
                f"feature {values['feature']!r} of {dataset.name} takes {distinct} distinct values; attribute_inference measures accuracy on a "
                f"categorical feature (at most {MAX_VALUES} values): bin it in the data first")

    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        from art.attacks.inference.attribute_inference import AttributeInferenceBaseline, AttributeInferenceBlackBox

        data = context.dataset
        if data is None or context.splits is None:
            raise KansaError("attribute_inference needs the dataset and its split in the attack context")
        self.check_data(self.values, data, context.splits, Location(f"attack {self.name}"))
        feature = data.feature_index(self.values["feature"])
        protocol = draw_protocol(context, self.values["members"])
        attacker = protocol.population
        values = np.unique(data.x[attacker, feature])
        if len(values) < 2:
            raise KansaError(f"feature {feature} takes a single value in the attacker's data; there is nothing to infer")
        model = self.values["attack_model"]
        view = target_view(target)
        seed_everything(context.seed)
        attack = AttributeInferenceBlackBox(view, attack_model_type=model, attack_feature=feature)
        attack.fit(data.x[attacker])
        baseline = AttributeInferenceBaseline(attack_model_type=model, attack_feature=feature)
        baseline.fit(data.x[attacker])
        counts = np.array([(data.x[attacker, feature] == v).sum() for v in values])
        majority = values[counts.argmax()]

        rows: list[dict[str, Any]] = []
        per_sample: dict[str, np.ndarray] = {}
        for split, idx in (("train", protocol.members), ("holdout", protocol.non_members)):
            records = data.x[idx]
            truth = records[:, feature]
            rest = np.delete(records, feature, axis=1)
            predicted = view.predict(records).argmax(axis=1).reshape(-1, 1).astype(np.float64)
            guess = attack.infer(rest, pred=predicted, values=list(values)).reshape(-1)
            guess_base = baseline.infer(rest, values=list(values)).reshape(-1)
            hit, hit_base, hit_major = guess == truth, guess_base == truth, truth == majority
            subset = f"split={split}"
            rows += [
                rate_row("attribute_accuracy", int(hit.sum()), len(idx), subset=subset),
                rate_row("attribute_accuracy_baseline", int(hit_base.sum()), len(idx), subset=subset),
                rate_row("attribute_accuracy_majority", int(hit_major.sum()), len(idx), subset=subset),
                # against the better yardstick, paired per record so the interval is the difference's own
                mean_row("attribute_gain", hit.astype(float) - (hit_base if hit_base.mean() >= hit_major.mean() else hit_major), subset=subset),
            ]
            per_sample[f"{split}_index"] = idx
            per_sample[f"{split}_truth"] = truth
            per_sample[f"{split}_inferred"] = guess
            per_sample[f"{split}_baseline"] = guess_base
        rows += [count_row("attacker_samples", len(attacker)), count_row("feature_values", len(values))]
        return AttackOutput(rows, per_sample, {"values": values.astype(np.float64)})
