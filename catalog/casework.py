"""The per-case job an ingest worker runs: read each file once, check it, analyse it.

Runs in worker processes: takes plain data, returns a picklable CaseOutcome, never touches the
database.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import imageio, memory
from .analysis.case import (
    CaseAnalysis, CropAccumulator, EmptyImageError, LabelSummary, regions_of_crop, summarize_label,
)
from .checks import (
    FindingData, geometry_differences, geometry_problems, has_errors, label_value_findings, value_counts,
)
from .errors import ImageReadError
from .layout import CaseFiles


# Decoded bytes per step of the one pass over an image channel (1 MiB: 512 Ki int16 or 256 Ki
# float32 voxels), so a slab and its temporaries stay in the core's cache. Side by side on the
# benchmark tasks, against a fixed 1 Mi voxels per slab: CT (int16) ingest 3 % faster with one
# process and 5 % with two, MR (float32) 6 % and 4 %; 64 Ki float32 voxels was slower again.
PASS_SLAB_BYTES = 1 << 20
# Heap faulted in at once before a case is decoded (memory.reserve_heap): at least a byte per
# voxel for the label, and one for the hole-filled box mask where it is built whole (a mask
# with many zeros inside its rows, `analysis.crop.fill_holes`).
HEAP_RESERVE_BYTES_PER_VOXEL = 2


@dataclass(frozen=True)
class InputFile:
    role: str  # image | label
    channel: int  # -1 for the label
    path: str  # relative to the task root
    size_bytes: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class CaseJob:
    root: str
    case: CaseFiles
    class_values: tuple[int, ...]
    # sha256 per relative path from the catalog; when every file still hashes the same, the
    # case is reported unchanged without decoding (a `touch` or a copy with new mtimes).
    known_sha256: dict[str, str] | None = None
    max_image_bytes: int | None = imageio.DEFAULT_MAX_IMAGE_BYTES


@dataclass
class CaseOutcome:
    identifier: str
    files: list[InputFile] = field(default_factory=list)
    findings: list[FindingData] = field(default_factory=list)
    geometry: dict | None = None  # of channel 0: ITK (x, y, z) size, spacing, origin, direction
    analysis: CaseAnalysis | None = None
    unchanged: bool = False  # content identical to the catalog's: nothing analysed
    read_seconds: float = 0.0
    analysis_seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return has_errors(self.findings)


def _relative_files(case: CaseFiles) -> list[tuple[str, int, str]]:
    return [("image", c, p) for c, p in enumerate(case.images)] + [("label", -1, case.label)]


def run_case(job: CaseJob) -> CaseOutcome:
    """Check and analyse one case. Never raises for bad data: problems become findings."""
    case = job.case
    outcome = CaseOutcome(case.identifier)
    try:
        _run(job, outcome)
    except ImageReadError as exc:
        outcome.findings.append(FindingData(exc.check, str(exc), case.identifier, exc.path))
        outcome.analysis = None
    except MemoryError:
        outcome.findings.append(FindingData(
            "image_too_large", f"{job.root}/{case.images[0]}: not enough memory to check and analyse the "
            f"case (files {', '.join((*case.images, case.label))})", case.identifier, case.images[0]))
        outcome.analysis = None
    except Exception as exc:  # noqa: BLE001 - a catalog bug must not stop the other cases
        outcome.findings.append(FindingData(
            "analysis_failed", f"{job.root}/{case.label}: checking or analysing case {case.identifier!r} "
            f"(files {', '.join((*case.images, case.label))}) failed with {exc.__class__.__name__}: {exc} "
            "(expected no exception: this is a catalog bug, please report it)", case.identifier, case.label))
        outcome.analysis = None
    return outcome


def _run(job: CaseJob, outcome: CaseOutcome) -> None:
    case = job.case
    files = _relative_files(case)
    started = time.perf_counter()
    missing = [rel for _, _, rel in files if not os.path.isfile(f"{job.root}/{rel}")]
    for rel in missing:
        outcome.findings.append(FindingData("missing_file", f"{job.root}/{rel}: listed in dataset.json "
                                            "but does not exist", case.identifier, rel))
    if missing:
        return

    if job.known_sha256 is not None:
        prints = [imageio.fingerprint_file(f"{job.root}/{rel}") for _, _, rel in files]
        if all(job.known_sha256.get(rel) == fp.sha256 for (_, _, rel), fp in zip(files, prints)):
            outcome.files = [InputFile(role, ch, rel, fp.size_bytes, fp.mtime_ns, fp.sha256)
                             for (role, ch, rel), fp in zip(files, prints)]
            outcome.unchanged = True
            outcome.read_seconds = time.perf_counter() - started
            return

    with contextlib.ExitStack() as stack:
        # The label is read whole (the analysis needs all of it); each image channel is opened
        # for one pass slab by slab, so no channel is ever held whole (peak memory).
        readers = [stack.enter_context(imageio.read_planes(f"{job.root}/{rel}", max_bytes=job.max_image_bytes))
                   for rel in case.images]
        if readers:  # a case's largest arrays: the label and the hole-filled box mask
            memory.reserve_heap(HEAP_RESERVE_BYTES_PER_VOXEL * math.prod(readers[0].header.size))
        label_image = imageio.read_image(f"{job.root}/{case.label}", max_bytes=job.max_image_bytes)
        headers = {("image", c): reader.header for c, reader in enumerate(readers)}
        headers[("label", -1)] = label_image.header
        summary = _header_checks(job, headers, label_image, outcome.findings)
        if summary is None:
            return
        outcome.geometry = _geometry(headers[("image", 0)])
        label = label_image.array
        if label.dtype.kind == "f" or label.dtype.itemsize > 2 or label.dtype == np.uint16:
            # whole, declared values >= 0 (checked above), kept exactly: the summary still holds
            fits_int16 = summary.max <= np.iinfo(np.int16).max
            label = label.astype(np.int16 if fits_int16 else np.int32)
        label_path, reference = label_image.header.path, headers[("image", 0)]
        label_fingerprint = label_image.fingerprint
        del label_image

        accumulator = CropAccumulator(label, len(readers), summary.foreground_box)
        adding = 0.0
        for c, reader in enumerate(readers):
            slab_voxels = max(1, PASS_SLAB_BYTES // np.dtype(reader.header.pixel_type).itemsize)
            for z0, z1, planes in reader.slabs(slab_voxels):
                t0 = time.perf_counter()
                accumulator.add(c, z0, z1, planes)
                adding += time.perf_counter() - t0
            if reader.nonfinite_count:
                outcome.findings.append(FindingData(
                    "nonfinite_voxels", f"{reader.path}: {reader.nonfinite_count} NaN/Inf voxels (expected none)",
                    case.identifier, reader.path))
        prints = [reader.fingerprint for reader in readers] + [label_fingerprint]
    outcome.files = [InputFile(role, ch, rel, fp.size_bytes, fp.mtime_ns, fp.sha256)
                     for (role, ch, rel), fp in zip(files, prints)]
    outcome.read_seconds = time.perf_counter() - started - adding
    findings = outcome.findings
    if findings:
        return

    started = time.perf_counter()
    try:
        crop = accumulator.finish()
    except EmptyImageError:
        findings.append(FindingData("empty_image", f"{reference.path}: every voxel of every channel is 0, "
                                    "there is no nonzero region to crop to", case.identifier, reference.path))
        return
    del accumulator
    regions = regions_of_crop(label, crop, job.class_values)
    outcome.analysis = CaseAnalysis.from_parts(crop, regions)
    outcome.analysis_seconds = time.perf_counter() - started + adding

    kept, label_foreground = outcome.analysis.regions.foreground_voxels, summary.foreground_voxels
    if label_foreground == 0:
        findings.append(FindingData("no_foreground", f"{label_path}: the label has no foreground voxel (only 0)",
                                    case.identifier, label_path))
    elif kept < label_foreground:
        findings.append(FindingData(
            "label_outside_crop", f"{label_path}: {label_foreground - kept} of {label_foreground} "
            "labelled voxels lie outside the nonzero bounding box and are dropped (as nnU-Net v1 does)",
            case.identifier, label_path))


def _header_checks(job: CaseJob, headers: dict, label_image,
                   findings: list[FindingData]) -> LabelSummary | None:
    """Checks that need only the headers and the label: dimensions, components, geometry, label
    values. Returns the label's summary, or None (findings added) when the case cannot be
    analysed."""
    identifier = job.case.identifier
    for header in headers.values():
        if header.ndim != 3:
            findings.append(FindingData("not_3d", f"{header.path}: expected a 3D image, found {header.ndim}D "
                                        f"with size {tuple(header.size)} (x, y, z, ...)", identifier, header.path))
        if header.components != 1:
            findings.append(FindingData("not_scalar", f"{header.path}: expected one value per voxel, found "
                                        f"{header.components} components", identifier, header.path))
    if findings:
        return None
    for header in headers.values():
        for problem in geometry_problems(_geometry(header)):
            findings.append(FindingData("invalid_geometry", f"{header.path}: {problem}", identifier, header.path))
    if findings:
        return None
    reference = headers[("image", 0)]
    geometry = _geometry(reference)
    for key, header in headers.items():
        if key == ("image", 0):
            continue
        for problem in geometry_differences(geometry, _geometry(header), f"in {reference.path}"):
            findings.append(FindingData("geometry_mismatch", f"{header.path}: {problem}", identifier, header.path))
    declared = set(job.class_values) | {0}
    summary = summarize_label(label_image.array)  # one pass over the whole (3D) label
    if not _surely_declared(label_image.array, summary, declared):  # look at each distinct value
        values, _ = value_counts(label_image.array)
        findings.extend(label_value_findings(values, declared, label_image.header.path, identifier))
    return None if has_errors(findings) else summary


def _surely_declared(label: np.ndarray, summary: LabelSummary, declared: set[int]) -> bool:
    """Every value of an integer label is declared when all of min..max are declared classes:
    the label's summary tells, without counting every distinct value."""
    if label.dtype.kind not in "iu" or label.size == 0:
        return False
    lo, hi = int(summary.min), int(summary.max)
    return lo >= 0 and set(range(hi + 1)) <= declared


def _geometry(header) -> dict:
    return {"size": list(header.size), "spacing": list(header.spacing), "origin": list(header.origin),
            "direction": list(header.direction)}
