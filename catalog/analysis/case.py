"""One case's complete analysis in one pass over its arrays: nnU-Net v1's crop facts,
per-class regions and foreground intensity samples. Pure: arrays in, dataclasses out.

Two steps, so that a caller can free the image channels before the second: `analyze_crop`
needs the channels and the label, `analyze_regions` only the label. `analyze_case` runs both.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .crop import BBox, as_slices, crop_mask, z_slabs
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


def analyze_crop(channels: Sequence[np.ndarray], label: np.ndarray) -> CropAnalysis:
    """Crop box, hole-filled mask size, distinct seg values and foreground samples of one case.

    channels: one (z, y, x) array per modality, any numeric dtype, same shape.
    label: (z, y, x) integer class values (>= 0), same shape (checked by the caller).
    Raises EmptyImageError when every voxel of every channel is 0.

    v1 builds the whole cropped seg (int, -1 outside the mask) and the cropped float32 data;
    here the label and channels are read through views of the box, slab by slab, and only the
    sampled voxels are converted to float32.
    """
    cropped = crop_mask(channels)
    if cropped is None:
        raise EmptyImageError("every voxel of every channel is 0")
    bbox, filled = cropped
    cropped_shape = tuple(b - a for a, b in bbox)
    box = as_slices(bbox)
    boxed_label = label[box]
    boxed_channels = [channel[box] for channel in channels]

    has_outside_background = has_inside_background = False  # seg -1 / seg 0
    present = np.zeros(0, dtype=np.int64)  # voxel count per positive value seen so far
    samples: list[list[np.ndarray]] = [[] for _ in channels]
    foreground_before = 0
    for z0, z1 in z_slabs(cropped_shape[0], cropped_shape[1] * cropped_shape[2]):
        labels = boxed_label[z0:z1]
        mask = filled[z0:z1]
        foreground = labels > 0
        background = ~foreground
        if not has_outside_background:
            has_outside_background = bool(np.any(background & ~mask))
        if not has_inside_background:
            has_inside_background = bool(np.any(background & mask))
        values = labels[foreground]
        if values.size:
            counts = np.bincount(values)
            if counts.size > present.size:
                counts[:present.size] += present
                present = counts
            else:
                present[:counts.size] += counts
            # v1 samples every 10th foreground voxel of the whole crop in C order
            first = (-foreground_before) % SAMPLE_STEP
            for channel, kept in zip(boxed_channels, samples):
                kept.append(channel[z0:z1][foreground][first::SAMPLE_STEP].astype(np.float32))
        foreground_before += values.size

    seg_values = [-1] * has_outside_background + [0] * has_inside_background
    seg_values += [int(v) for v in np.flatnonzero(present) if v > 0]
    channel_results = []
    for kept in samples:
        values = np.concatenate(kept) if kept else np.empty(0, dtype=np.float32)
        channel_results.append(ChannelAnalysis(values, compute_stats(values)))
    return CropAnalysis(bbox, cropped_shape, int(np.count_nonzero(filled)), tuple(seg_values),
                        tuple(channel_results))


def analyze_case(channels: Sequence[np.ndarray], label: np.ndarray, class_values: Sequence[int]) -> CaseAnalysis:
    """Analyse one case: `analyze_crop`, then `analyze_regions` of the label in the crop box.

    class_values: the declared foreground classes (> 0), in dataset.json order.
    """
    crop = analyze_crop(channels, label)
    return CaseAnalysis.from_parts(crop, analyze_regions(label_in_box(label, crop.bbox), class_values))
