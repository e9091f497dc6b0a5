"""Voxel counts and 26-connected regions per class of a cropped seg (numpy (z, y, x)).

Regions are numbered as scikit-image's `label` (connectivity=None, i.e. full/26 in 3D) numbers
them: raster (C) order of each region's first voxel. One multi-label cc3d pass gives the same
regions in the same order for every class at once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import numpy as np

from .crop import as_slices, bounding_box


@dataclass(frozen=True)
class ClassRegions:
    """One class of one case. Counts are voxels of the cropped seg."""

    value: int
    voxel_count: int
    region_voxel_counts: tuple[int, ...]  # scikit-image label order

    @property
    def num_regions(self) -> int:
        return len(self.region_voxel_counts)


@dataclass(frozen=True)
class RegionAnalysis:
    classes: tuple[ClassRegions, ...]  # one per requested class, in the order requested
    all_classes_num_regions: int  # regions of "seg is any of the requested classes"
    foreground_voxels: int  # seg > 0


def analyze_regions(seg: np.ndarray, class_values: Sequence[int]) -> RegionAnalysis:
    """Per class: voxel count and region sizes; and the region count of all classes together.

    `seg` is the cropped seg (int, -1/0 background). `class_values` are the declared classes
    (> 0); values present in `seg` but not requested are ignored, as v1 does. Work happens
    inside the foreground's own bounding box, usually a small part of the crop.
    """
    foreground = seg > 0
    box = bounding_box(foreground)
    if box is None:
        empty = tuple(ClassRegions(int(c), 0, ()) for c in class_values)
        return RegionAnalysis(empty, 0, 0)
    sub = np.ascontiguousarray(seg[as_slices(box)])
    sub[sub < 0] = 0
    wanted = np.isin(sub, np.asarray(class_values, dtype=sub.dtype))
    sub[~wanted] = 0
    components, n = cc3d.connected_components(sub, connectivity=26, return_N=True)

    flat_fg = np.flatnonzero(wanted)
    comp_of_voxel = components.ravel()[flat_fg]
    class_of_component = np.zeros(n + 1, dtype=np.int64)
    class_of_component[comp_of_voxel] = sub.ravel()[flat_fg]
    size_of_component = np.bincount(comp_of_voxel, minlength=n + 1)

    classes = []
    for c in class_values:
        members = np.flatnonzero(class_of_component == c)  # ascending = label order
        sizes = tuple(int(s) for s in size_of_component[members])
        classes.append(ClassRegions(int(c), int(sum(sizes)), sizes))

    if flat_fg.size:
        _, n_union = cc3d.connected_components(wanted, connectivity=26, return_N=True)
    else:
        n_union = 0
    return RegionAnalysis(tuple(classes), int(n_union), int(np.count_nonzero(foreground)))
