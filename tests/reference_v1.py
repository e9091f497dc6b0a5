"""A deliberately plain re-statement of nnU-Net v1's per-case logic (SimpleITK, np.where,
scipy binary_fill_holes, skimage label class by class), used to check the catalog's stored rows
and views independently of catalog.analysis. Slow, obvious, and written like v1's code."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_fill_holes
from skimage.measure import label as sk_label


def reference_case(task: Path, identifier: str, num_channels: int, classes: list[int]) -> dict:
    images = [sitk.ReadImage(str(task / "imagesTr" / f"{identifier}_{c:04d}.nii.gz")) for c in range(num_channels)]
    data = np.stack([sitk.GetArrayFromImage(i) for i in images]).astype(np.float32)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(task / "labelsTr" / f"{identifier}.nii.gz"))).astype(np.float32)
    mask = binary_fill_holes(np.any(data != 0, axis=0))
    where = np.where(mask)
    bbox = [[int(np.min(w)), int(np.max(w)) + 1] for w in where]
    sl = tuple(slice(a, b) for a, b in bbox)
    data = data[(slice(None),) + sl]
    seg = seg[sl]
    seg[(seg == 0) & ~mask[sl]] = -1
    spacing_xyz = images[0].GetSpacing()
    vol = np.prod(spacing_xyz)
    per_class = {}
    for c in classes:
        labelled, n = sk_label(seg == c, return_num=True)
        per_class[c] = {"voxels": int(np.sum(seg == c)), "regions": [int(np.sum(labelled == i)) for i in range(1, n + 1)]}
    _, n_all = sk_label(np.isin(seg, classes), return_num=True)
    return {
        "identifier": identifier,
        "spacing_zyx": tuple(reversed(spacing_xyz)),
        "original_size_zyx": tuple(reversed(images[0].GetSize())),
        "cropped_size_zyx": seg.shape,
        "bbox": bbox,
        "foreground_voxels": int(np.sum(seg > 0)),
        "size_reduction": np.prod(seg.shape) / np.prod(images[0].GetSize()),
        "voxel_volume": vol,
        "classes": per_class,
        "all_classes_regions": n_all,
        "samples": [data[c][seg > 0][::10] for c in range(num_channels)],
    }


def reference_task(task: Path) -> dict:
    dataset = json.loads((task / "dataset.json").read_text())
    classes = [int(k) for k in dataset["labels"] if int(k) > 0]
    ids = sorted(t["image"].split("/")[-1][: -len(".nii.gz")] for t in dataset["training"])
    n = len(dataset["modality"])
    return {"classes": classes, "labels": {int(k): v for k, v in dataset["labels"].items()},
            "modalities": {int(k): v for k, v in dataset["modality"].items()},
            "cases": {i: reference_case(task, i, n, classes) for i in ids}}
