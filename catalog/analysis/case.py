"""One case's complete analysis in one pass over its arrays: nnU-Net v1's crop facts,
per-class regions and foreground intensity samples. Pure: arrays in, dataclasses out.

Two steps, so that a caller can free the image channels before the second: `analyze_crop`
needs the channels and the label, `analyze_regions` only the label. `analyze_case` runs both.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .crop import BBox, FilledMask, NonzeroMask, as_slices, z_slabs
from .intensity import SAMPLE_STEP, IntensityStats, compute_stats
from .regions import RegionAnalysis, analyze_regions

# Bump when a change to the analysis changes stored results: the next ingest re-analyses every
# case whose rows came from an older version.
ANALYSIS_VERSION = 1


@dataclass(frozen=True)
class ChannelAnalysis:
    samples: np.ndarray  # float32, v1's data[c][seg > 0][::10]
    stats: IntensityStats  # v1's local_props for this case and channel


@dataclass(frozen=True)
class CropAnalysis:
    """What nnU-Net v1's crop learns about one case (everything that needs the image channels).

    Sizes and boxes are numpy order (z, y, x); `bbox` is half-open. `seg_values` are the sorted
    distinct values of the cropped seg (v1's `classes`, including -1 and 0).
    """

    bbox: BBox
    cropped_shape: tuple[int, int, int]
    nonzero_voxels: int  # voxels of the hole-filled nonzero mask
    seg_values: tuple[int, ...]
    channels: tuple[ChannelAnalysis, ...]


@dataclass(frozen=True)
class CaseAnalysis:
    """What nnU-Net v1's crop and analyzer learn about one case (see `CropAnalysis`)."""

    bbox: BBox
    cropped_shape: tuple[int, int, int]
    nonzero_voxels: int
    seg_values: tuple[int, ...]
    regions: RegionAnalysis
    channels: tuple[ChannelAnalysis, ...]

    @classmethod
    def from_parts(cls, crop: CropAnalysis, regions: RegionAnalysis) -> CaseAnalysis:
        return cls(crop.bbox, crop.cropped_shape, crop.nonzero_voxels, crop.seg_values, regions, crop.channels)


class EmptyImageError(ValueError):
    """Every voxel of every channel is zero: there is nothing to crop to (v1 crashes here)."""


def label_in_box(label: np.ndarray, bbox: BBox) -> np.ndarray:
    """The label cropped to the box (a view): v1's cropped seg without its -1 marks, which is all
    `analyze_regions` needs."""
    return label[as_slices(bbox)]


class CropAccumulator:
    """nnU-Net v1's crop facts from one pass over the image channels, slab by slab, in any order
    of channels and slabs (e.g. as each file is decoded), so no channel has to be held whole.

    `add` keeps, per slab: the nonzero mask (`crop.NonzeroMask`) and each channel's values at
    the labelled voxels (float32, v1's cast). `finish` takes the box,
    fills the mask's holes inside it, and reads the seg values, counts and v1's samples (every
    10th foreground voxel of the crop, C order) from the label and what was kept.
    """

    def __init__(self, label: np.ndarray, n_channels: int):
        """label: (z, y, x) integer class values (>= 0); the image channels have its shape."""
        self.label = label
        self.shape = label.shape
        self._nonzero = NonzeroMask(label.shape)
        self._labelled_values: list[list[tuple[int, int, np.ndarray]]] = [[] for _ in range(n_channels)]

    def add(self, channel: int, z0: int, z1: int, planes: np.ndarray) -> None:
        """Planes z0..z1 (a (z1 - z0, y, x) array) of image channel `channel`."""
        self._nonzero.add(z0, z1, planes)
        labelled = self.label[z0:z1] > 0
        self._labelled_values[channel].append((z0, z1, planes[labelled].astype(np.float32)))

    def finish(self) -> CropAnalysis:
        """Raises EmptyImageError when every voxel of every channel was 0."""
        cropped = self._nonzero.crop()
        if cropped is None:
            raise EmptyImageError("every voxel of every channel is 0")
        bbox, filled = cropped
        del self._nonzero
        seg_values = _seg_values(label_in_box(self.label, bbox), filled)
        channels = []
        for kept in self._labelled_values:
            samples = self._samples_in_box(kept, bbox)
            channels.append(ChannelAnalysis(samples, compute_stats(samples)))
        return CropAnalysis(bbox, filled.shape, filled.count(), seg_values, tuple(channels))

    def _samples_in_box(self, kept: list[tuple[int, int, np.ndarray]], bbox: BBox) -> np.ndarray:
        """v1's data[c][seg > 0][::10] over the crop: the kept values of labelled voxels inside
        the box, in C order, every 10th from the first."""
        (bz0, bz1), (y0, y1), (x0, x1) = bbox
        inside_yx = np.zeros(self.shape[1:], dtype=bool)
        inside_yx[y0:y1, x0:x1] = True
        parts, before = [], 0
        for z0, z1, values in sorted(kept, key=lambda item: item[0]):
            a, b = max(z0, bz0), min(z1, bz1)
            if a >= b:
                continue
            labelled = self.label[z0:z1] > 0
            inside = np.zeros((z1 - z0, *self.shape[1:]), dtype=bool)
            inside[a - z0:b - z0] = inside_yx
            in_box = values[inside[labelled]]
            parts.append(in_box[(-before) % SAMPLE_STEP::SAMPLE_STEP])
            before += in_box.size
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def _seg_values(boxed_label: np.ndarray, filled: FilledMask) -> tuple[int, ...]:
    """np.unique of v1's cropped seg without building it: -1 where the label is 0 outside the
    filled mask, 0 where it is 0 inside, and the positive values present."""
    has_outside_background = has_inside_background = False
    present = np.zeros(0, dtype=np.int64)  # voxel count per positive value seen so far
    shape = boxed_label.shape
    for z0, z1 in z_slabs(shape[0], shape[1] * shape[2]):
        labels = boxed_label[z0:z1]
        background = labels <= 0
        if not (has_outside_background and has_inside_background):  # usually settled at once
            mask = filled.planes(z0, z1)
            has_outside_background = has_outside_background or bool(np.any(background & ~mask))
            has_inside_background = has_inside_background or bool(np.any(background & mask))
        values = labels[~background]
        if values.size:
            counts = np.bincount(values)
            if counts.size > present.size:
                counts[:present.size] += present
                present = counts
            else:
                present[:counts.size] += counts
    values = [-1] * has_outside_background + [0] * has_inside_background
    return tuple(values + [int(v) for v in np.flatnonzero(present) if v > 0])


def analyze_crop(channels: Sequence[np.ndarray], label: np.ndarray) -> CropAnalysis:
    """Crop box, hole-filled mask size, distinct seg values and foreground samples of one case.

    channels: one (z, y, x) array per modality, any numeric dtype, same shape.
    label: (z, y, x) integer class values (>= 0), same shape (checked by the caller).
    Raises EmptyImageError when every voxel of every channel is 0. The same pass as
    `CropAccumulator`, over arrays in memory.
    """
    accumulator = CropAccumulator(label, len(channels))
    for index, channel in enumerate(channels):
        for z0, z1 in z_slabs(channel.shape[0], channel.shape[1] * channel.shape[2]):
            accumulator.add(index, z0, z1, channel[z0:z1])
    return accumulator.finish()


def analyze_case(channels: Sequence[np.ndarray], label: np.ndarray, class_values: Sequence[int]) -> CaseAnalysis:
    """Analyse one case: `analyze_crop`, then `analyze_regions` of the label in the crop box.

    class_values: the declared foreground classes (> 0), in dataset.json order.
    """
    crop = analyze_crop(channels, label)
    return CaseAnalysis.from_parts(crop, analyze_regions(label_in_box(label, crop.bbox), class_values))
