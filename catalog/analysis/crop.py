"""nnU-Net v1's crop: nonzero mask with hole filling, half-open bounding box, seg with -1.

All arrays are numpy order (z, y, x). Pure functions: arrays in, arrays and tuples out.
"""
from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np

BBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def bounding_box(mask: np.ndarray) -> BBox | None:
    """Half-open [start, stop) per axis of the True voxels of a 3D mask, or None if it is empty.

    Same result as v1's `np.where` + min/max, from per-axis `any()` projections (no index arrays).
    """
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def as_slices(bbox: BBox) -> tuple[slice, slice, slice]:
    return tuple(slice(a, b) for a, b in bbox)  # type: ignore[return-value]


def nonzero_mask(channels: Sequence[np.ndarray]) -> np.ndarray:
    """Union over channels of `value != 0` (v1 says "all" in a docstring; its code uses any)."""
    mask = channels[0] != 0
    for channel in channels[1:]:
        mask |= channel != 0
    return mask


def fill_holes_in_box(mask_in_box: np.ndarray) -> np.ndarray:
    """Fill the holes of a mask cropped to its own bounding box; same result as
    scipy.ndimage.binary_fill_holes on the whole volume.

    A hole is a zero region 6-connected to no array border. Every voxel outside the bounding box
    is zero and reaches the border, so a zero region inside the box is a hole exactly when it
    touches none of the box's faces. A one-voxel zero frame around the box joins every
    face-touching region into the single component that starts at the first voxel (label 1),
    so one 6-connected labelling and one comparison give the filled mask.
    """
    zeros = np.ones(tuple(n + 2 for n in mask_in_box.shape), dtype=bool)
    np.logical_not(mask_in_box, out=zeros[1:-1, 1:-1, 1:-1])
    labels = cc3d.connected_components(zeros, connectivity=6)
    return labels[1:-1, 1:-1, 1:-1] != 1


def crop_mask(channels: Sequence[np.ndarray]) -> tuple[BBox, np.ndarray] | None:
    """Bounding box of the union nonzero mask, and the hole-filled mask inside that box.

    Hole filling cannot change the box (holes are enclosed by mask voxels), so the box is taken
    first and filling runs inside it only. Returns None when every voxel of every channel is 0.
    """
    mask = nonzero_mask(channels)
    bbox = bounding_box(mask)
    if bbox is None:
        return None
    return bbox, fill_holes_in_box(mask[as_slices(bbox)])


def crop_seg(label: np.ndarray, bbox: BBox, filled_mask_in_box: np.ndarray) -> np.ndarray:
    """v1's cropped seg (int16): label inside the box, -1 where the label is 0 outside the mask.

    Labelled voxels outside the mask keep their label; labels outside the box are dropped.
    `label` must hold integer class values (z, y, x).
    """
    seg = label[as_slices(bbox)].astype(np.int16)
    seg[(seg == 0) & ~filled_mask_in_box] = -1
    return seg
