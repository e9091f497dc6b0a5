"""One case's complete analysis in one pass over its arrays: nnU-Net v1's crop facts,
per-class regions and foreground intensity samples. Pure: arrays in, dataclasses out.

Two steps, so that a caller can free the image channels before the second: `analyze_crop`
needs the channels and the label, `regions_of_crop` only the label and the crop.
`analyze_case` runs both; `CaseAnalysis.from_parts` joins them (the seg's background values come
from the crop, its positive values from the regions).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .crop import BBox, FilledMask, NonzeroMask, as_slices, slab_bounding_box, z_slabs
from .intensity import SAMPLE_STEP, IntensityStats, compute_stats
from .regions import RegionAnalysis, analyze_regions_in_box

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

    Sizes and boxes are numpy order (z, y, x); boxes are half-open. `background_values` are -1
    and/or 0 as v1's cropped seg holds them (the positive values come with the regions).
    `foreground_box` is the box of the cropped seg's labelled voxels, in crop coordinates
    (None: no labelled voxel in the crop).
    """

    bbox: BBox
    cropped_shape: tuple[int, int, int]
    nonzero_voxels: int  # voxels of the hole-filled nonzero mask
    background_values: tuple[int, ...]
    foreground_box: BBox | None
    channels: tuple[ChannelAnalysis, ...]


@dataclass(frozen=True)
class CaseAnalysis:
    """What nnU-Net v1's crop and analyzer learn about one case (see `CropAnalysis`).

    `seg_values` are the sorted distinct values of the cropped seg (v1's `classes`, including -1
    and 0).
    """

    bbox: BBox
    cropped_shape: tuple[int, int, int]
    nonzero_voxels: int
    seg_values: tuple[int, ...]
    regions: RegionAnalysis
    channels: tuple[ChannelAnalysis, ...]

    @classmethod
    def from_parts(cls, crop: CropAnalysis, regions: RegionAnalysis) -> CaseAnalysis:
        seg_values = crop.background_values + regions.foreground_values
        return cls(crop.bbox, crop.cropped_shape, crop.nonzero_voxels, seg_values, regions, crop.channels)


class EmptyImageError(ValueError):
    """Every voxel of every channel is zero: there is nothing to crop to (v1 crashes here)."""


def label_in_box(label: np.ndarray, bbox: BBox) -> np.ndarray:
    """The label cropped to the box (a view): v1's cropped seg without its -1 marks, which is all
    `analyze_regions` needs."""
    return label[as_slices(bbox)]


def _contains(outer: BBox, inner: BBox) -> bool:
    return all(a <= c and d <= b for (a, b), (c, d) in zip(outer, inner))


@dataclass(frozen=True)
class LabelSummary:
    """Facts of a whole label image, numpy order (z, y, x): its smallest and largest value, its
    voxels > 0, and their half-open box (None when there is none)."""

    min: int | float
    max: int | float
    foreground_voxels: int
    foreground_box: BBox | None


# Label bytes looked at per step of `summarize_label`: the slab and its temporaries stay in the
# core's cache, so the label is read from memory once rather than once per fact.
LABEL_SLAB_BYTES = 1 << 20


def summarize_label(label: np.ndarray) -> LabelSummary:
    """`LabelSummary` of a (z, y, x) label of any real dtype, in one pass."""
    if label.size == 0:
        return LabelSummary(0, 0, 0, None)
    lo, hi, foreground = label.flat[0], label.flat[0], 0

    def labelled(z0: int, z1: int) -> np.ndarray:  # the other facts of each slab on the way
        nonlocal lo, hi, foreground
        planes = label[z0:z1]
        lo, hi = min(lo, planes.min()), max(hi, planes.max())
        mask = planes > 0
        foreground += int(np.count_nonzero(mask))
        return mask

    box = slab_bounding_box(label.shape, labelled, LABEL_SLAB_BYTES // label.itemsize)
    return LabelSummary(lo.item(), hi.item(), foreground, box)


class CropAccumulator:
    """nnU-Net v1's crop facts from one pass over the image channels, slab by slab, in any order
    of channels and slabs (e.g. as each file is decoded), so no channel has to be held whole.

    `add` keeps, per slab: the nonzero mask (`crop.NonzeroMask`) and each channel's values at
    the labelled voxels (float32, v1's cast), looked for only inside the label's own box.
    `finish` takes the box, fills the mask's holes inside it, and reads the background values
    and v1's samples (every 10th foreground voxel of the crop, C order) from the label and what
    was kept.
    """

    def __init__(self, label: np.ndarray, n_channels: int, label_box: BBox | None):
        """label: (z, y, x) integer class values (>= 0); the image channels have its shape.
        label_box: the box of label > 0 (`summarize_label`; None: no voxel > 0)."""
        self.label = label
        self.shape = label.shape
        self._nonzero = NonzeroMask(label.shape)
        self.label_box = label_box
        self._labelled_values: list[list[tuple[int, int, np.ndarray]]] = [[] for _ in range(n_channels)]

    def add(self, channel: int, z0: int, z1: int, planes: np.ndarray) -> None:
        """Planes z0..z1 (a (z1 - z0, y, x) array) of image channel `channel`."""
        self._nonzero.add(z0, z1, planes)
        if self.label_box is None:
            return
        (lz0, lz1), (y0, y1), (x0, x1) = self.label_box
        a, b = max(z0, lz0), min(z1, lz1)
        if a < b:  # C order inside the label box is C order of the whole planes: no label outside
            labelled = self.label[a:b, y0:y1, x0:x1] > 0
            values = planes[a - z0:b - z0, y0:y1, x0:x1][labelled].astype(np.float32)
            self._labelled_values[channel].append((a, b, values))

    def finish(self) -> CropAnalysis:
        """Raises EmptyImageError when every voxel of every channel was 0."""
        cropped = self._nonzero.crop()
        if cropped is None:
            raise EmptyImageError("every voxel of every channel is 0")
        bbox, filled = cropped
        del self._nonzero
        boxed_label = label_in_box(self.label, bbox)
        everything_inside = self.label_box is None or _contains(bbox, self.label_box)  # the usual case
        if everything_inside:
            foreground_box = None if self.label_box is None else \
                tuple((a - o, b - o) for (a, b), (o, _) in zip(self.label_box, bbox))
        else:  # labelled voxels outside the crop: v1 drops them
            foreground_box = slab_bounding_box(boxed_label.shape, lambda z0, z1: boxed_label[z0:z1] > 0)
        channels = []
        for kept in self._labelled_values:
            samples = self._samples_in_box(kept, bbox, everything_inside)
            channels.append(ChannelAnalysis(samples, compute_stats(samples)))
        return CropAnalysis(bbox, filled.shape, filled.count(), _background_values(boxed_label, filled),
                            foreground_box, tuple(channels))  # type: ignore[arg-type]

    def _samples_in_box(self, kept: list[tuple[int, int, np.ndarray]], bbox: BBox,
                        everything_inside: bool) -> np.ndarray:
        """v1's data[c][seg > 0][::10] over the crop: the kept values of labelled voxels inside
        the box, in C order, every 10th from the first. `everything_inside`: the label's box lies
        in the crop box, so every kept value counts."""
        parts, before = [], 0
        if not everything_inside:
            (lz0, _), (ly0, ly1), (lx0, lx1) = self.label_box
            (bz0, bz1), (by0, by1), (bx0, bx1) = bbox
            inside_yx = np.zeros((ly1 - ly0, lx1 - lx0), dtype=bool)  # the crop box in label-box rows
            inside_yx[max(by0 - ly0, 0):max(by1 - ly0, 0), max(bx0 - lx0, 0):max(bx1 - lx0, 0)] = True
        for z0, z1, values in sorted(kept, key=lambda item: item[0]):
            if not everything_inside:
                a, b = max(z0, bz0), min(z1, bz1)
                if a >= b:
                    continue
                labelled = self.label[z0:z1, ly0:ly1, lx0:lx1] > 0
                inside = np.zeros(labelled.shape, dtype=bool)
                inside[a - z0:b - z0] = inside_yx
                values = values[inside[labelled]]
            parts.append(values[(-before) % SAMPLE_STEP::SAMPLE_STEP])
            before += values.size
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def _background_values(boxed_label: np.ndarray, filled: FilledMask) -> tuple[int, ...]:
    """The values <= 0 of v1's cropped seg without building it: -1 where the label is 0 outside
    the filled mask, 0 where it is 0 inside."""
    has_outside = has_inside = False
    shape = boxed_label.shape
    for z0, z1 in z_slabs(shape[0], shape[1] * shape[2]):
        background = boxed_label[z0:z1] <= 0
        mask = filled.planes(z0, z1)
        has_outside = has_outside or bool(np.any(background & ~mask))
        has_inside = has_inside or bool(np.any(background & mask))
        if has_outside and has_inside:  # usually in the first slab
            break
    return (-1,) * has_outside + (0,) * has_inside


def analyze_crop(channels: Sequence[np.ndarray], label: np.ndarray) -> CropAnalysis:
    """Crop box, hole-filled mask size, background seg values and foreground samples of one case.

    channels: one (z, y, x) array per modality, any numeric dtype, same shape.
    label: (z, y, x) integer class values (>= 0), same shape (checked by the caller).
    Raises EmptyImageError when every voxel of every channel is 0. The same pass as
    `CropAccumulator`, over arrays in memory.
    """
    accumulator = CropAccumulator(label, len(channels), summarize_label(label).foreground_box)
    for index, channel in enumerate(channels):
        for z0, z1 in z_slabs(channel.shape[0], channel.shape[1] * channel.shape[2]):
            accumulator.add(index, z0, z1, channel[z0:z1])
    return accumulator.finish()


def analyze_case(channels: Sequence[np.ndarray], label: np.ndarray, class_values: Sequence[int]) -> CaseAnalysis:
    """Analyse one case: `analyze_crop`, then `analyze_regions` of the label in the crop box.

    class_values: the declared foreground classes (> 0), in dataset.json order.
    """
    crop = analyze_crop(channels, label)
    return CaseAnalysis.from_parts(crop, regions_of_crop(label, crop, class_values))


def regions_of_crop(label: np.ndarray, crop: CropAnalysis, class_values: Sequence[int]) -> RegionAnalysis:
    """`analyze_regions` of the label in the crop box, whose labelled voxels' box the crop
    already found."""
    return analyze_regions_in_box(label_in_box(label, crop.bbox), crop.foreground_box, class_values)
