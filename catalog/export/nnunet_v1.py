"""`catalog export nnunet-v1`: nnU-Net v1's cropped task folder, written from the catalog.

Writes what nnU-Net v1 (1.7.1) `crop()` + `DatasetAnalyzer.analyze_dataset()` write, with the
same keys, key order, Python/numpy types and values:

    <id>.npz  <id>.pkl  gt_segmentations/  dataset.json
    dataset_properties.pkl  intensityproperties.pkl  props_per_case.pkl
    catalog_provenance.json   (ours: where the folder came from)

Everything except the npz voxel arrays comes from the database. The arrays are cropped from the
raw files again (their content hash is checked against the catalog's first), streamed slab by
slab into the zip, and compressed in parallel with a fast zlib level (still a normal npz).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Engine, select

from .. import __version__
from ..analysis.crop import as_slices, crop_mask, crop_seg, z_slabs
from ..db import session_scope
from ..errors import CatalogError, ExportRefusedError
from ..models import Case, CaseClass, CaseRegion, Export, IngestRun
from ..properties import DatasetProperties, error_cases, find_task, load_properties
from ..memory import freed_memory_kept
from ..pool import objects_frozen, process_pool
from .pickles import write_pickle

PROVENANCE_FILE = "catalog_provenance.json"
DEFAULT_COMPRESSLEVEL = 1  # zlib level: ~10x faster than numpy's default 6, files ~10% larger
INTENSITY_RULES = ("always", "ct-only")


@dataclass
class ExportSummary:
    task: str
    out_dir: str
    cases: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # identifier -> why
    intensity: bool = True
    seconds: float = 0.0


def default_out_dir(task: str) -> str:
    base = os.environ.get("nnUNet_raw_data_base")
    if not base:
        raise CatalogError("no --out given and $nnUNet_raw_data_base is not set: say where to write the folder")
    return os.path.join(base, "nnUNet_cropped_data", task)


def wants_intensity(rule: str, modalities: dict[int, str]) -> bool:
    """`always` (default): every task. `ct-only`: nnUNet_plan_and_preprocess's rule, which collects
    intensities only when a dataset.json modality is exactly "CT" or "ct"."""
    if rule not in INTENSITY_RULES:
        raise CatalogError(f"unknown intensity rule {rule!r}; use one of {', '.join(INTENSITY_RULES)}")
    return rule == "always" or any(m in ("CT", "ct") for m in modalities.values())


def export_nnunet_v1(engine: Engine, task_name: str, out_dir: str | None = None, *, intensity: str = "always",
                     skip_failed: bool = False, overwrite: bool = False, raw_root: str | None = None,
                     workers: int | None = None, compresslevel: int = DEFAULT_COMPRESSLEVEL,
                     progress: Callable[[int, int], None] | None = None) -> ExportSummary:
    """Write the cropped folder of `task_name` into `out_dir` (see module docstring).

    Refuses when cases have errors (or were never analysed) unless `skip_failed`. `raw_root`
    reads the raw files from another place than the path stored at ingest (another machine);
    the paths written into the pkl files stay the stored ones.
    """
    with objects_frozen():  # no full collections over the imported modules (see pool.objects_frozen)
        return _export(engine, task_name, out_dir, intensity, skip_failed, overwrite, raw_root, workers,
                       compresslevel, progress)


def _export(engine, task_name, out_dir, intensity, skip_failed, overwrite, raw_root, workers, compresslevel,
            progress) -> ExportSummary:
    import time

    started = time.monotonic()
    props = load_properties(engine, task_name, intensity=lambda modalities: wants_intensity(intensity, modalities))
    with_intensity = props.intensity is not None
    skipped = _check_exportable(engine, props, skip_failed)
    out_dir = os.path.abspath(out_dir or default_out_dir(props.task))
    staging = _prepare_out_dir(out_dir, overwrite)

    root = props.root_path
    read_root = raw_root or root
    jobs = [_CaseArrays(read_root, c.identifier, c.image_paths, c.label_path, c.bbox, c.input_digest,
                        os.path.join(staging, c.identifier + ".npz"), compresslevel) for c in props.cases]
    _run_parallel(jobs, workers, progress)

    with session_scope(engine) as session:
        regions = _regions_by_case(session, props)
        runs = _ingest_runs(session, props)
    for c in props.cases:
        write_pickle(case_properties(props, c), os.path.join(staging, c.identifier + ".pkl"))
    gt = os.path.join(staging, "gt_segmentations")
    os.makedirs(gt)
    for c in props.cases:
        shutil.copy(os.path.join(read_root, c.label_path), os.path.join(gt, os.path.basename(c.label_path)))
    with session_scope(engine) as session:
        dataset_json = find_task(session, props.task).dataset_json
    with open(os.path.join(staging, "dataset.json"), "w", encoding="utf-8") as f:
        f.write(dataset_json)

    intensityproperties = intensity_properties(props) if with_intensity else None
    write_pickle(dataset_properties(props, intensityproperties), os.path.join(staging, "dataset_properties.pkl"))
    if intensityproperties is not None:
        write_pickle(intensityproperties, os.path.join(staging, "intensityproperties.pkl"))
    write_pickle(props_per_case(props, regions), os.path.join(staging, "props_per_case.pkl"))

    digest = content_digest(props)
    provenance = {
        "catalog_version": __version__, "format": "nnunet-v1", "task": props.task,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "content_digest": digest, "cases": props.identifiers, "skipped_cases": skipped,
        "intensity_rule": intensity, "intensityproperties": with_intensity,
        "raw_root": root, "ingest_runs": runs,
    }
    with open(os.path.join(staging, PROVENANCE_FILE), "w") as f:
        json.dump(provenance, f, indent=2)
    _swap_into_place(staging, out_dir)
    with session_scope(engine) as session:
        task = find_task(session, props.task)
        session.add(Export(task_id=task.id, format="nnunet-v1", path=out_dir, content_digest=digest,
                           catalog_version=__version__,
                           parameters={"intensity": intensity, "skip_failed": skip_failed, "cases": len(props.cases)}))
    return ExportSummary(props.task, out_dir, props.identifiers, skipped, with_intensity, time.monotonic() - started)


# ---- what v1 pickles ---------------------------------------------------------------------------

def case_properties(props: DatasetProperties, c) -> OrderedDict:
    """`<id>.pkl`: v1's ImageCropper properties, keys and types as v1 writes them."""
    root = props.root_path
    return OrderedDict([
        ("original_size_of_raw_data", np.array(c.original_size, dtype=np.int64)),
        ("original_spacing", np.array(c.spacing, dtype=np.float64)),
        ("list_of_data_files", [os.path.join(root, "imagesTr", os.path.basename(p)) for p in c.image_paths]),
        ("seg_file", os.path.join(root, "labelsTr", os.path.basename(c.label_path))),
        ("itk_origin", tuple(float(v) for v in c.itk_origin)),
        ("itk_spacing", tuple(float(v) for v in c.itk_spacing)),
        ("itk_direction", tuple(float(v) for v in c.itk_direction)),
        ("crop_bbox", [[int(a), int(b)] for a, b in c.bbox]),  # list of lists: v1 assigns into it
        ("classes", np.array(c.seg_values, dtype=np.float32)),
        ("size_after_cropping", tuple(int(v) for v in c.cropped_size)),
    ])


def intensity_properties(props: DatasetProperties) -> OrderedDict:
    result = OrderedDict()
    for channel, data in props.intensity.items():
        entry = OrderedDict()
        entry["local_props"] = OrderedDict((cid, data.local[cid].as_v1()) for cid in props.identifiers)
        entry.update(data.global_stats.as_v1())
        result[int(channel)] = entry
    return result


def dataset_properties(props: DatasetProperties, intensityproperties) -> dict:
    return {
        "all_sizes": [tuple(int(v) for v in c.cropped_size) for c in props.cases],
        "all_spacings": [np.array(c.spacing, dtype=np.float64) for c in props.cases],
        "all_classes": list(props.all_classes),
        "modalities": {int(k): v for k, v in props.modalities.items()},
        "intensityproperties": intensityproperties,
        "size_reductions": OrderedDict((c.identifier, np.float64(c.size_reduction)) for c in props.cases),
    }


def props_per_case(props: DatasetProperties, regions: dict) -> OrderedDict:
    """v1's per-case segmentation properties (what nnU-Net <= 1.1.3 stored and 1.7.1's
    `_load_seg_analyze_classes` still computes): classes as np.int64, volumes np.float64 mm³."""
    classes = np.array(props.all_classes, dtype=np.int64)
    result = OrderedDict()
    for c in props.cases:
        vol_per_voxel = np.prod(c.itk_spacing)
        per_class = regions.get(c.id, {})
        only_one_region = OrderedDict()
        only_one_region[tuple(classes)] = per_class.get("__all__", 0) == 1
        for value in classes:
            only_one_region[(value,)] = len(per_class.get(int(value), (0, []))[1]) == 1
        volume_per_class = OrderedDict()
        region_volume_per_class = OrderedDict()
        for value in classes:
            voxels, region_voxels = per_class.get(int(value), (0, []))
            volume_per_class[value] = np.int64(voxels) * vol_per_voxel
            region_volume_per_class[value] = [np.int64(n) * vol_per_voxel for n in region_voxels]
        result[c.identifier] = {
            "has_classes": np.array(c.seg_values, dtype=np.float32),
            "only_one_region": only_one_region,
            "volume_per_class": volume_per_class,
            "region_volume_per_class": region_volume_per_class,
        }
    return result


def _regions_by_case(session, props: DatasetProperties) -> dict:
    """case id -> {class: (voxels, [region voxels in label order]), "__all__": union regions}."""
    ids = [c.id for c in props.cases]
    result: dict = {i: {} for i in ids}
    for row in session.scalars(select(CaseClass).where(CaseClass.case_id.in_(ids))):
        result[row.case_id][row.class_value] = (row.voxel_count, [])
    for row in session.scalars(select(CaseRegion).where(CaseRegion.case_id.in_(ids))
                               .order_by(CaseRegion.case_id, CaseRegion.class_value, CaseRegion.region_index)):
        result[row.case_id][row.class_value][1].append(row.voxel_count)
    for case_id, n in session.execute(select(Case.id, Case.all_classes_num_regions).where(Case.id.in_(ids))):
        result[case_id]["__all__"] = n
    return result


def _ingest_runs(session, props: DatasetProperties) -> list[dict]:
    run_ids = sorted({r for r in session.scalars(select(Case.ingest_run_id).where(
        Case.id.in_([c.id for c in props.cases]))) if r is not None})
    runs = session.scalars(select(IngestRun).where(IngestRun.id.in_(run_ids)).order_by(IngestRun.id))
    return [{"id": r.id, "started_at": r.started_at.isoformat() if r.started_at else None,
             "finished_at": r.finished_at.isoformat() if r.finished_at else None, "host": r.host,
             "catalog_version": r.catalog_version, "analysis_version": r.analysis_version} for r in runs]


def content_digest(props: DatasetProperties) -> str:
    """sha256 over (identifier, input digest) of the exported cases: changes iff an input file did."""
    h = hashlib.sha256()
    for c in props.cases:
        h.update(f"{c.identifier}\t{c.input_digest}\n".encode())
    return h.hexdigest()


# ---- refusal and the output folder -----------------------------------------------------------

def _check_exportable(engine: Engine, props: DatasetProperties, skip_failed: bool) -> dict[str, str]:
    errors = error_cases(engine, props.task)
    task_errors = errors.get(None, [])
    if task_errors:
        raise ExportRefusedError(f"{props.task}: the task has errors, fix them and ingest again:\n  "
                                 + "\n  ".join(task_errors))
    skipped = {}
    for identifier, status in props.excluded.items():
        why = "; ".join(errors.get(identifier, [])) or ("never analysed" if status == "pending" else status)
        skipped[identifier] = f"{status}: {why}"
    if skipped and not skip_failed:
        listing = "\n  ".join(f"{k}: {v}" for k, v in list(skipped.items())[:20])
        raise ExportRefusedError(
            f"{props.task}: {len(skipped)} case(s) cannot be exported:\n  {listing}\n"
            "Fix the files and run `catalog ingest` again, or pass --skip-failed to export the other "
            f"{len(props.cases)} case(s) without them.")
    if not props.cases:
        raise ExportRefusedError(f"{props.task}: no analysed case to export")
    return skipped


def _prepare_out_dir(out_dir: str, overwrite: bool) -> str:
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite \
            and not os.path.exists(os.path.join(out_dir, PROVENANCE_FILE)):
        raise ExportRefusedError(f"{out_dir}: exists, is not empty and was not written by catalog; "
                                 "choose another --out or pass --overwrite to replace it")
    os.makedirs(os.path.dirname(out_dir) or ".", exist_ok=True)
    staging = f"{out_dir}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def _swap_into_place(staging: str, out_dir: str) -> None:
    """Replace the folder whole: no npz of a removed case survives (v1 would count it)."""
    old = f"{out_dir}.old-{os.getpid()}"
    if os.path.exists(out_dir):
        os.rename(out_dir, old)
    os.rename(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


# ---- npz arrays ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _CaseArrays:
    root: str
    identifier: str
    image_paths: tuple[str, ...]
    label_path: str
    bbox: tuple
    input_digest: str | None
    out_path: str
    compresslevel: int


def _run_parallel(jobs: list[_CaseArrays], workers: int | None, progress) -> None:
    from ..ingest import default_workers

    workers = min(workers or default_workers(), len(jobs)) or 1
    done = 0
    if workers <= 1:
        with freed_memory_kept():
            for job in jobs:
                write_case_arrays(job)
                done += 1
                if progress:
                    progress(done, len(jobs))
        return
    with process_pool(workers) as pool:
        for _ in pool.map(write_case_arrays, jobs):
            done += 1
            if progress:
                progress(done, len(jobs))


def write_case_arrays(job: _CaseArrays) -> None:
    """Read the case again, crop it as at ingest, stream `data` (float32 [C+1, z, y, x]) to npz."""
    from .. import imageio
    from ..ingest import input_digest
    from ..casework import InputFile

    images = [imageio.read_image(os.path.join(job.root, p)) for p in job.image_paths]
    label = imageio.read_image(os.path.join(job.root, job.label_path))
    files = [InputFile("image", i, p, 0, 0, img.fingerprint.sha256) for i, (p, img) in
             enumerate(zip(job.image_paths, images))]
    files.append(InputFile("label", -1, job.label_path, 0, 0, label.fingerprint.sha256))
    if input_digest(files) != job.input_digest:
        raise ExportRefusedError(f"{job.identifier}: its files changed on disk since they were ingested "
                                 f"({job.root}); run `catalog ingest` first")
    channels = [img.array for img in images]
    del images
    bbox, filled = crop_mask(channels)
    if [list(b) for b in bbox] != [list(b) for b in job.bbox]:
        raise ExportRefusedError(f"{job.identifier}: crop box {bbox} differs from the catalog's {job.bbox}")
    shape = (len(channels) + 1, *(b - a for a, b in bbox))
    write_npz_stream(job.out_path, shape, _data_slabs(channels, label.array, bbox, filled), job.compresslevel)


_EXPORT_SLAB_VOXELS = 1 << 22  # 16 MiB of float32 per slab handed to the compressor


def _data_slabs(channels, label, bbox, filled):
    """v1's `data` array (float32 [C+1, z, y, x]: the cropped channels, then the cropped seg with
    -1 outside the mask) in C order, as float32 slabs of whole planes: never the whole array."""
    box = as_slices(bbox)
    planes = list(z_slabs(bbox[0][1] - bbox[0][0], filled.shape[1] * filled.shape[2], _EXPORT_SLAB_VOXELS))
    for channel in channels:
        cropped = channel[box]
        for z0, z1 in planes:
            yield np.ascontiguousarray(cropped[z0:z1], dtype="<f4")
    for z0, z1 in planes:
        yield np.ascontiguousarray(crop_seg(label, bbox, filled, (z0, z1), dtype=np.float32), dtype="<f4")


@contextlib.contextmanager
def _isal_deflate():
    """Let zipfile deflate with ISA-L (about 4x faster than zlib at level 1, same format).

    zipfile has no hook for its compressor, so its two module-level helpers are swapped for the
    duration of one npz write (export workers are single-threaded processes)."""
    try:
        from isal import isal_zlib
    except ImportError:  # plain zlib then
        yield
        return
    saved = zipfile._get_compressor, zipfile.crc32

    def get_compressor(compress_type, compresslevel=None):
        if compress_type == zipfile.ZIP_DEFLATED:
            return isal_zlib.compressobj(min(max(compresslevel or 1, 0), 3), isal_zlib.DEFLATED, -15)
        return saved[0](compress_type, compresslevel)

    zipfile._get_compressor, zipfile.crc32 = get_compressor, isal_zlib.crc32
    try:
        yield
    finally:
        zipfile._get_compressor, zipfile.crc32 = saved


def write_npz_stream(path: str, shape: tuple[int, ...], slabs, compresslevel: int) -> None:
    """np.savez_compressed(path, data=array) for a little-endian float32 array of `shape` given as
    C-ordered contiguous slabs (`slabs` yields them in order), without ever building the array."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
    with _isal_deflate(), zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED,
                                          compresslevel=compresslevel, allowZip64=True) as archive:
        with archive.open("data.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for slab in slabs:
                f.write(slab.data)
