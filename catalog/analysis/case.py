"""One case's complete analysis in one pass over its arrays: nnU-Net v1's crop facts,
per-class regions and foreground intensity samples. Pure: arrays in, a dataclass out.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .crop import BBox, as_slices, crop_mask, crop_seg
from .intensity import IntensityStats, compute_stats, foreground_sample_positions, sample_channel
from .regions import RegionAnalysis, analyze_regions

# Bump when a change to the analysis changes stored results: the next ingest re-analyses every
# case whose rows came from an older version.
ANALYSIS_VERSION = 1


@dataclass(frozen=True)
class ChannelAnalysis:
    samples: np.ndarray  # float32, v1's data[c][seg > 0][::10]
    stats: IntensityStats  # v1's local_props for this case and channel


@dataclass(frozen=True)
class CaseAnalysis:
    """What nnU-Net v1's crop and analyzer learn about one case.

    Sizes and boxes are numpy order (z, y, x); `bbox` is half-open. `seg_values` are the sorted
    distinct values of the cropped seg (v1's `classes`, including -1 and 0).
    """

    bbox: BBox
    cropped_shape: tuple[int, int, int]
    nonzero_voxels: int
    seg_values: tuple[int, ...]
    regions: RegionAnalysis
    channels: tuple[ChannelAnalysis, ...]


class EmptyImageError(ValueError):
    """Every voxel of every channel is zero: there is nothing to crop to (v1 crashes here)."""


def analyze_case(channels: Sequence[np.ndarray], label: np.ndarray, class_values: Sequence[int]) -> CaseAnalysis:
    """Analyse one case.

    channels: one (z, y, x) array per modality, any numeric dtype, same shape.
    label: (z, y, x) integer class values, same shape (checked by the caller).
    class_values: the declared foreground classes (> 0), in dataset.json order.
    """
    cropped = crop_mask(channels)
    if cropped is None:
        raise EmptyImageError("every voxel of every channel is 0")
    bbox, filled = cropped
    seg = crop_seg(label, bbox, filled)
    cropped_shape = tuple(int(s) for s in seg.shape)

    regions = analyze_regions(seg, class_values)
    seg_values = _distinct_values(seg, filled)

    positions = foreground_sample_positions(seg)
    slices = as_slices(bbox)
    channel_results = []
    for channel in channels:
        samples = sample_channel(channel, slices, positions, cropped_shape)
        channel_results.append(ChannelAnalysis(samples, compute_stats(samples)))
    return CaseAnalysis(bbox, cropped_shape, int(np.count_nonzero(filled)), seg_values, regions,
                        tuple(channel_results))


def _distinct_values(seg: np.ndarray, filled: np.ndarray) -> tuple[int, ...]:
    """np.unique(seg) without sorting the whole crop: -1/0 from the mask, positives counted."""
    values = []
    if np.any(seg == -1):
        values.append(-1)
    if np.any((seg == 0) & filled):
        values.append(0)
    positive = seg[seg > 0]
    if positive.size:
        values.extend(int(v) for v in np.flatnonzero(np.bincount(positive)))
    return tuple(values)
