"""Input pre-processing defenses (ART), always attacked through: the attack sees the defended model.

Non-differentiable transforms pass the gradient straight through (BPDA with the identity,
Athalye et al. 2018); random ones are marked `randomized`, so attacks follow the expectation over
several passes (EoT). Evaluating them only against the undefended model would overstate them.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from audit.params import Location, Number, Param
from defenses import register
from defenses.base import Defended, Defense, DefenseContext, note_row

if TYPE_CHECKING:
    import torch

    from audit.data import Dataset, Splits


def straight_through_input(inner: "torch.nn.Module", transform: Callable[[np.ndarray], np.ndarray]) -> "torch.nn.Module":
    """`inner(transform(x))` in value, with d transform / dx taken as the identity (BPDA)."""
    import torch

    class InputTransform(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            processed = np.asarray(transform(x.detach().cpu().numpy()), dtype=np.float32)
            return self.inner(x + (torch.from_numpy(processed).to(x.device) - x).detach())

    return InputTransform().eval()


class _Preprocessor(Defense):
    stage = "preprocessing"

    @abstractmethod
    def preprocessor(self, context: DefenseContext) -> Any:
        """The ART preprocessor (called as `p(x)` -> `(x', y)`)."""

    def apply(self, context: DefenseContext) -> Defended:
        art_preprocessor = self.preprocessor(context)

        def transform(x: np.ndarray) -> np.ndarray:
            return art_preprocessor(x)[0]

        rows = [note_row("adaptive_attack", 1, "attacks ran through the pre-processing: gradients pass it as the identity (BPDA)"
                         + ("; its randomness is averaged over several passes (EoT)" if self.randomized else ""))]
        return Defended(module=straight_through_input(context.base, transform), output_kind=context.output_kind, rows=rows)


@register
class FeatureSqueezing(_Preprocessor):
    name = "feature_squeezing"
    summary = "Feature squeezing (Xu et al. 2018) through ART: reduce every input value to a few bits"
    params = (Param("bit_depth", Number(1, 64, integer=True), 4, "bits kept per input value"),)

    def preprocessor(self, context: DefenseContext) -> Any:
        from art.defences.preprocessor import FeatureSqueezing as ARTFeatureSqueezing

        return ARTFeatureSqueezing(clip_values=context.dataset.input_range, bit_depth=self.values["bit_depth"])


@register
class SpatialSmoothing(_Preprocessor):
    name = "spatial_smoothing"
    data_kinds = ("image",)
    data_note = "a median filter runs over neighbouring pixels, which feature vectors do not have"
    summary = "Spatial smoothing through ART: a median filter over each image"
    params = (Param("window_size", Number(2, 64, integer=True), 3, "median filter window (pixels)"),)

    def preprocessor(self, context: DefenseContext) -> Any:
        from art.defences.preprocessor import SpatialSmoothing as ARTSpatialSmoothing

        return ARTSpatialSmoothing(window_size=self.values["window_size"], channels_first=True, clip_values=context.dataset.input_range)


@register
class JpegCompression(_Preprocessor):
    name = "jpeg_compression"
    data_kinds = ("image",)
    data_note = "JPEG encodes images of 1 or 3 channels"
    summary = "JPEG compression through ART: re-encode every image at a lossy quality"
    params = (Param("quality", Number(1, 100, integer=True), 50, "JPEG quality"),)

    @classmethod
    def check_data(cls, values: dict[str, Any], dataset: "Dataset", splits: "Splits", where: Location) -> None:
        super().check_data(values, dataset, splits, where)
        if dataset.input_shape[0] not in (1, 3):
            raise where.error(f"defense jpeg_compression needs images of 1 or 3 channels; {dataset.name} has {dataset.input_shape[0]}")

    def preprocessor(self, context: DefenseContext) -> Any:
        from art.defences.preprocessor import JpegCompression as ARTJpegCompression

        return ARTJpegCompression(clip_values=context.dataset.input_range, quality=self.values["quality"], channels_first=True)


@register
class GaussianNoise(_Preprocessor):
    name = "gaussian_noise"
    randomized = True
    summary = "Gaussian noise added to every input at prediction time (ART's GaussianAugmentation); attacked with EoT"
    params = (Param("sigma", Number(0, None, closed="neither"), 0.1, "noise standard deviation (input units)"),)

    def preprocessor(self, context: DefenseContext) -> Any:
        from art.defences.preprocessor import GaussianAugmentation

        return GaussianAugmentation(sigma=self.values["sigma"], augmentation=False, clip_values=context.dataset.input_range,
                                    apply_fit=False, apply_predict=True)
