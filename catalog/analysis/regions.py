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

from .crop import BBox, as_slices, slab_bounding_box


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
    foreground_values: tuple[int, ...]  # the distinct values > 0 in seg, ascending


def analyze_regions(seg: np.ndarray, class_values: Sequence[int]) -> RegionAnalysis:
    """Per class: voxel count and region sizes; and the region count of all classes together.

    `seg` is the cropped seg (integers, <= 0 background; v1's -1 marks may be there or not, so
    the label cropped to the box serves too). `class_values` are the declared classes (> 0);
    values present in `seg` but not requested are ignored, as v1 does. Work happens inside the
    foreground's own bounding box, usually a small part of the crop.
    """
    box = slab_bounding_box(seg.shape, lambda z0, z1: seg[z0:z1] > 0)
    return analyze_regions_in_box(seg, box, class_values)


def analyze_regions_in_box(seg: np.ndarray, foreground_box: BBox | None, class_values: Sequence[int]) -> RegionAnalysis:
    """`analyze_regions` when the half-open box of `seg > 0` is known (None: no voxel > 0)."""
    if foreground_box is None:
        empty = tuple(ClassRegions(int(c), 0, ()) for c in class_values)
        return RegionAnalysis(empty, 0, 0, ())
    sub = np.array(seg[as_slices(foreground_box)])  # contiguous copy of the foreground box only
    if sub.dtype.kind == "i":
        np.maximum(sub, 0, out=sub)
    foreground_voxels = int(np.count_nonzero(sub))
    # a declared class the label's dtype cannot hold (300 in a uint8 label) is simply absent
    limits = np.iinfo(sub.dtype) if sub.dtype.kind in "iu" else None
    storable = [c for c in class_values if limits is None or limits.min <= c <= limits.max]
    wanted = np.isin(sub, np.asarray(storable, dtype=sub.dtype))
    undeclared: tuple[int, ...] = ()
    if np.count_nonzero(wanted) != foreground_voxels:
        undeclared_voxels = ~wanted & (sub > 0)
        undeclared = tuple(int(v) for v in np.unique(sub[undeclared_voxels]))
        sub[undeclared_voxels] = 0  # undeclared values are background for the regions, as in v1
    components, n = cc3d.connected_components(sub, connectivity=26, return_N=True)

    comp_of_voxel = components[wanted]
    class_of_component = np.zeros(n + 1, dtype=np.int64)
    class_of_component[comp_of_voxel] = sub[wanted]
    size_of_component = np.bincount(comp_of_voxel, minlength=n + 1)
    del components, comp_of_voxel, sub  # before the second labelling: bounds peak memory

    classes = []
    for c in class_values:
        members = np.flatnonzero(class_of_component == c)  # ascending = label order
        sizes = tuple(int(s) for s in size_of_component[members])
        classes.append(ClassRegions(int(c), int(sum(sizes)), sizes))

    n_union = cc3d.connected_components(wanted, connectivity=26, return_N=True)[1] if n else 0
    present = sorted({c.value for c in classes if c.voxel_count} | set(undeclared))
    return RegionAnalysis(tuple(classes), int(n_union), foreground_voxels, tuple(present))
