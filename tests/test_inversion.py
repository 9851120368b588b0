"""Model inversion is measured, not just drawn: the measures are right on images whose answer is known, and they
separate MIFace's reconstructions from the start image they began as."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.base import AttackContext
from attacks.inversion import MIFace, correlation_matrix, inversion_measures
from tests.privacy_fixtures import row


def test_correlation_of_an_image_with_itself_its_negative_and_a_constant():
    image = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    references = np.concatenate([image, -image, np.full_like(image, 0.5)])
    assert correlation_matrix(image, references)[0] == pytest.approx([1.0, -1.0, 0.0])


def test_measures_tell_perfect_reconstructions_from_one_shared_start_image():
    rng = np.random.default_rng(0)
    means = rng.uniform(0, 1, (4, 1, 5, 5))
    perfect = inversion_measures(np.ones(4), correlation_matrix(means, means))
    assert perfect["own"] == pytest.approx(np.ones(4)) and perfect["closest_own"].all()
    shared = np.repeat(means.mean(axis=0, keepdims=True), 4, axis=0)
    baseline = inversion_measures(np.full(4, 0.25), correlation_matrix(shared, means))
    assert baseline["closest_own"].sum() == 1  # one image for every class is closest to exactly one of them
    assert baseline["own"].mean() == pytest.approx(baseline["other"].mean())


@pytest.fixture(scope="module")
def inversion(digits):
    dataset, splits, target = digits
    context = AttackContext(5, dataset.class_names, dataset, splits, None)
    return MIFace(max_iter=100).run(target, dataset.x[splits.test], dataset.y[splits.test], context), dataset


def test_reconstructions_beat_the_baseline_on_every_measure(inversion):
    output, dataset = inversion
    k = dataset.n_classes

    def value(metric: str, subset: str = "all") -> float:
        return row(output.rows, metric, subset=subset)["value"]

    assert value("inversion_confidence") > 0.5 > value("inversion_confidence", "baseline")
    assert value("inversion_closest_own") >= 0.7 > value("inversion_closest_own", "baseline") == pytest.approx(1 / k)
    gain = row(output.rows, "inversion_gain")
    assert gain["value"] > 0 and gain["ci_low"] > 0
    assert value("inversion_similarity_own") > value("inversion_similarity_other")
    assert value("inversion_similarity_own", "baseline") == pytest.approx(value("inversion_similarity_other", "baseline"), abs=0.05)


def test_images_and_measures_are_kept_as_artifacts(inversion):
    output, dataset = inversion
    k = dataset.n_classes
    arts = output.artifacts
    assert arts["reconstructions"].shape == arts["baseline"].shape == arts["class_means"].shape == (k, *dataset.input_shape)
    low, high = dataset.input_range
    assert arts["reconstructions"].min() >= low and arts["reconstructions"].max() <= high
    assert not np.allclose(arts["reconstructions"], arts["baseline"])
    assert arts["similarity"].shape == (k, k)
    assert row(output.rows, "inversion_confidence", subset=f"class={dataset.class_names[3]}")["value"] == pytest.approx(arts["confidence"][3])


def test_the_batched_torch_mi_face_takes_arts_steps(digits):
    """ART's MIFace is the independent implementation: the same start, labels and steps give the same reconstructions."""
    from art.attacks.inference.model_inversion import MIFace as ArtMIFace

    from attacks.inversion import mi_face
    from attacks.membership import target_view

    dataset, _, target = digits
    start = np.repeat(dataset.x.mean(axis=0, keepdims=True), dataset.n_classes, axis=0).astype(np.float32)
    labels = np.arange(dataset.n_classes)
    ours = mi_face(target, start, labels, max_iter=40, learning_rate=0.1)
    art = ArtMIFace(target_view(target), max_iter=40, learning_rate=0.1, batch_size=len(labels), verbose=False).infer(start.copy(), labels)
    assert np.abs(ours - start).max() > 0.05  # it moved
    np.testing.assert_allclose(ours, art, rtol=0, atol=1e-4)
