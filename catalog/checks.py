"""The data checks run on every ingest (and by `catalog check`), and the findings they produce.

Each check has a name, a severity and a one-line description (the README's table is generated
from CHECKS by tests/test_docs.py, so the two cannot drift). A finding's message names the file
and gives the expected and the found value.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

ERROR, WARNING, HINT = "error", "warning", "hint"

CHECKS: dict[str, tuple[str, str]] = {
    # task level
    "dataset_json_missing": (ERROR, "the task folder has no dataset.json"),
    "dataset_json_malformed": (ERROR, "dataset.json is not valid JSON or a key has the wrong type"),
    "dataset_json_missing_key": (ERROR, "dataset.json lacks `training`, `modality` or `labels`"),
    "labels_not_consecutive": (ERROR, "declared labels are not 0, 1, 2, ... (nnU-Net needs consecutive classes)"),
    "stray_file": (WARNING, "a file in imagesTr/ or labelsTr/ that dataset.json does not list"),
    # case level, from dataset.json
    "duplicate_identifier": (ERROR, "two `training` entries give the same case identifier"),
    "bad_file_name": (ERROR, "a `training` path does not end in .nii.gz as nnU-Net v1 requires"),
    "path_escapes_task": (ERROR, "a listed path leaves the task folder, directly or through a symlink"),
    "missing_file": (ERROR, "a listed image or label file does not exist"),
    "channel_count_mismatch": (ERROR, "imagesTr/ holds channel files beyond the declared modalities"),
    # case level, from the files
    "unreadable_file": (ERROR, "a file that is not a readable NIfTI image"),
    "truncated_file": (ERROR, "a .nii.gz whose data stops short (gzip stream or voxel bytes)"),
    "corrupt_file": (ERROR, "a .nii.gz whose gzip CRC or length does not match its content"),
    "image_too_large": (ERROR, "a header whose voxel array would exceed the memory limit (refused before reading)"),
    "not_3d": (ERROR, "a 2D or 4D file where a 3D image is expected"),
    "not_scalar": (ERROR, "a vector/RGB image where a scalar image is expected"),
    "invalid_geometry": (ERROR, "a header whose spacing, origin or direction is not finite, or spacing not "
                                "positive (SimpleITK silently substitutes values, or hangs, on such headers)"),
    "geometry_mismatch": (ERROR, "size, spacing, origin or direction differ between a case's channels and label"),
    "nonfinite_voxels": (ERROR, "NaN or Inf voxels in an image (SimpleITK would silently read them as 0)"),
    "non_integer_label": (ERROR, "label values that are not whole numbers"),
    "undeclared_label": (ERROR, "label values that dataset.json `labels` does not declare"),
    "empty_image": (ERROR, "every voxel of every channel is 0: nothing to crop to (nnU-Net v1 crashes)"),
    "no_foreground": (WARNING, "the label has no foreground voxel"),
    "label_outside_crop": (WARNING, "labelled voxels lie outside the nonzero bounding box; nnU-Net v1 drops them"),
    "analysis_failed": (ERROR, "the analysis raised an unexpected error (a catalog bug: please report it)"),
    "mask_like_label": (HINT, "label values look like a 0/255 mask; map 255 to 1 before training"),
}

# Geometry is compared like nnU-Net's verify_dataset_integrity (np.isclose), slightly looser so
# that float32 header rounding after a reorientation (~1e-8, nnU-Net #1287) is not an error.
GEOMETRY_RTOL = 1e-5
GEOMETRY_ATOL = 1e-5


@dataclass(frozen=True)
class FindingData:
    check: str
    message: str
    case: str | None = None  # None for task-level findings
    path: str | None = None

    @property
    def severity(self) -> str:
        return CHECKS[self.check][0]

    def as_dict(self) -> dict:
        return {**asdict(self), "severity": self.severity}


def has_errors(findings) -> bool:
    return any(f.severity == ERROR for f in findings)


def geometry_differences(reference: dict, other: dict, where: str = "") -> list[str]:
    """Human-readable differences between two geometries (keys size, spacing, origin, direction;
    ITK (x, y, z) order), empty when they agree within tolerance. `where` names the reference
    (e.g. "in imagesTr/x_0000.nii.gz") and is put after the expected value."""
    where = f" {where}" if where else ""
    problems = []
    if tuple(reference["size"]) != tuple(other["size"]):
        problems.append(f"size {tuple(other['size'])} differs from {tuple(reference['size'])}{where} (x, y, z)")
        return problems  # nothing else is comparable
    for key in ("spacing", "origin", "direction"):
        a, b = np.asarray(reference[key], float), np.asarray(other[key], float)
        # NaN never agrees (a header whose geometry is NaN matches nothing, not even itself)
        if a.shape != b.shape or not np.allclose(a, b, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL):
            problems.append(f"{key} {_fmt(other[key])} differs from {_fmt(reference[key])}{where} "
                            f"(tolerance {GEOMETRY_ATOL:g} + {GEOMETRY_RTOL:g} x |value|)")
    return problems


def geometry_problems(geometry: dict) -> list[str]:
    """What is unusable in one image's geometry as SimpleITK reports it (ITK (x, y, z) order):
    spacing must be finite and > 0, origin and direction finite, direction not singular."""
    problems = []
    spacing = np.asarray(geometry["spacing"], float)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        problems.append(f"spacing {_fmt(spacing)} (expected finite values > 0)")
    origin = np.asarray(geometry["origin"], float)
    if not np.all(np.isfinite(origin)):
        problems.append(f"origin {_fmt(origin)} (expected finite values)")
    direction = np.asarray(geometry["direction"], float)
    n = math.isqrt(direction.size)
    if not np.all(np.isfinite(direction)):
        problems.append(f"direction {_fmt(direction)} (expected finite values)")
    elif n * n == direction.size and n and abs(np.linalg.det(direction.reshape(n, n))) < 1e-6:
        problems.append(f"direction {_fmt(direction)} is singular (expected a rotation, |det| = 1)")
    return problems


def _fmt(values) -> str:
    # enough digits to show a difference at the tolerance; -0 printed as 0
    return "(" + ", ".join(f"{float(v) + 0.0:.8g}" for v in values) + ")"


def label_value_findings(values: np.ndarray, declared: set[int], path: str, case: str) -> list[FindingData]:
    """Findings for the distinct values of a label file (any dtype)."""
    findings = []
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size != values.size:
        findings.append(FindingData("non_integer_label", f"{path}: label holds NaN/Inf values", case, path))
    fractional = finite[finite != np.round(finite)] if finite.dtype.kind == "f" else finite[:0]
    if fractional.size:
        shown = ", ".join(f"{v:g}" for v in fractional[:5])
        findings.append(FindingData(
            "non_integer_label", f"{path}: label values must be whole numbers, found {shown}"
            + (f" and {fractional.size - 5} more" if fractional.size > 5 else ""), case, path))
    whole = sorted({int(v) for v in finite[finite == np.round(finite)]}) if finite.dtype.kind == "f" \
        else sorted(int(v) for v in finite)
    undeclared = [v for v in whole if v not in declared]
    if undeclared:
        shown = ", ".join(str(v) for v in undeclared[:10]) + (" ..." if len(undeclared) > 10 else "")
        findings.append(FindingData(
            "undeclared_label", f"{path}: label values {shown} are not declared in dataset.json "
            f"labels (declared: {sorted(declared)})", case, path))
    if set(whole) <= {0, 255} and 255 in whole and 255 not in declared:
        findings.append(FindingData(
            "mask_like_label", f"{path}: label values are 0 and 255, like an image mask; "
            "convert 255 to 1 (nnU-Net needs consecutive classes)", case, path))
    return findings


def value_counts(array: np.ndarray, slab_voxels: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of an array and their counts (like np.unique(return_counts=True)).

    Small unsigned integer labels (the usual case) are counted with bincount slab by slab, so
    no full-size int64 temporary or sort of the whole volume is needed.
    """
    flat = array.reshape(-1)
    if array.dtype in (np.uint8, np.uint16, np.bool_):
        counts = np.zeros(65536 if array.dtype == np.uint16 else 256, dtype=np.int64)
        for start in range(0, flat.size, slab_voxels):
            chunk = np.bincount(flat[start:start + slab_voxels], minlength=counts.size)
            counts[: chunk.size] += chunk
        present = np.flatnonzero(counts)
        return present.astype(array.dtype), counts[present]
    totals: dict = {}
    for start in range(0, flat.size, slab_voxels):
        values, counts = np.unique(flat[start:start + slab_voxels], return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            totals[v] = totals.get(v, 0) + c
    keys = sorted(totals, key=lambda v: (v != v, v))  # NaN last
    return np.asarray(keys, dtype=array.dtype), np.asarray([totals[k] for k in keys], dtype=np.int64)
