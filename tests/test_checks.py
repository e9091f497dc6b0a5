"""The data checks (issue 4): one broken task per check, each asserting the exact finding.

Every broken task is a copy of a small generated task (catalog.synthetic.make_task) with one
thing broken. `CORPUS` maps a defect to its builder and the findings it must produce; the
meta-test at the end asserts that every check in `catalog.checks.CHECKS` is produced by at least
one corpus entry (or by a dedicated test, for `analysis_failed`), so a check cannot be added
without a test, and removing a check's code makes its corpus test fail.

Most entries run through `catalog.checkrun.check_task` (no database); the ingest tests run on
both backends (`db_url`) and cover storage, stale rows, exit codes, `catalog findings` and the
export refusal.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from catalog.checkrun import check_task
from catalog.checks import CHECKS, ERROR, HINT, WARNING
from catalog.layout import read_layout

SCALE = 0.5  # generated tasks at half size: a few ms per case

# ------------------------------------------------------------------------------------------------
# small tools to break a task
# ------------------------------------------------------------------------------------------------


def base_task(make_raw_task, kind: str) -> Path:
    """mr: 2 clean cases (mr_1, mr_2), 2 modalities, float32; ct1: 1 clean case ct_000, 1
    modality, int16; ct2: ct_000 and ct_001 (whose vessel spills outside the crop: a warning)."""
    if kind == "mr":
        return make_raw_task("mr", 502, n_cases=2, shape_scale=SCALE)
    if kind == "ct1":
        return make_raw_task("ct", 501, n_cases=1, shape_scale=SCALE)
    if kind == "ct2":
        return make_raw_task("ct", 501, n_cases=2, shape_scale=SCALE)
    raise ValueError(kind)


def edit_json(task: Path, change: Callable[[dict], object]) -> None:
    path = task / "dataset.json"
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content, indent=2))


def rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray], *, geometry=None) -> None:
    """Rewrite a NIfTI file with change(array) (numpy (z, y, x)), keeping its geometry unless
    `geometry(image)` edits it."""
    image = sitk.ReadImage(str(path))
    out = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(image)))
    if out.GetDimension() == image.GetDimension():
        out.SetSpacing(image.GetSpacing())
        out.SetOrigin(image.GetOrigin())
        out.SetDirection(image.GetDirection())
    if geometry is not None:
        geometry(out)
    sitk.WriteImage(out, str(path), useCompression=True)


def patch_header(path: Path, **fields) -> None:
    """Set raw NIfTI-1 header fields of a .nii.gz (little-endian, as SimpleITK writes)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    offsets = {"dim": (40, "8h"), "datatype": (70, "h"), "bitpix": (72, "h"), "pixdim": (76, "8f"),
               "qform_code": (252, "h"), "sform_code": (254, "h"), "qoffset": (268, "3f"), "srow": (280, "12f")}
    for name in [n for n in fields if n.startswith("pixdim") and n[6:].isdigit()]:  # pixdim1=... edits one
        values = list(struct.unpack_from("<8f", raw, 76))
        values[int(name[6:])] = fields.pop(name)
        fields["pixdim"] = values
    for name, value in fields.items():
        offset, fmt = offsets[name]
        struct.pack_into("<" + fmt, raw, offset, *(value if isinstance(value, (tuple, list)) else (value,)))
    path.write_bytes(gzip.compress(bytes(raw)))


# ------------------------------------------------------------------------------------------------
# the corpus: defect -> (base task, how to break it, the findings it must give)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    check: str
    case: str | None
    file: str  # relative to the task; the message must name it (absolute path)
    fragments: tuple[str, ...] = ()  # expected and found values the message must give


@dataclass(frozen=True)
class Defect:
    base: str
    breaker: Callable[[Path], None]
    expect: tuple[Expect, ...]
    max_image_bytes: int | None = None  # None: the default limit
    extra_ok: frozenset = field(default_factory=frozenset)  # checks that may appear besides


def _drop_key(key):
    return lambda t: edit_json(t, lambda c: c.pop(key))


def _labels(labels):
    return lambda t: edit_json(t, lambda c: c.__setitem__("labels", labels))


def _training_entry(position, **entry):
    return lambda t: edit_json(t, lambda c: c["training"][position].update(entry))


def _position(task: Path, identifier: str) -> int:
    training = json.loads((task / "dataset.json").read_text())["training"]
    return [e["image"].split("/")[-1] for e in training].index(identifier + ".nii.gz")


def _break_missing_label(t):
    (t / "labelsTr/mr_1.nii.gz").unlink()


def _break_missing_channel(t):
    (t / "imagesTr/mr_2_0001.nii.gz").unlink()


def _break_stray(t):
    shutil.copy(t / "imagesTr/mr_1_0000.nii.gz", t / "imagesTr/mr_9_0000.nii.gz")


def _break_stray_label(t):
    shutil.copy(t / "labelsTr/mr_1.nii.gz", t / "labelsTr/mr_9.nii.gz")


def _break_duplicate(t):
    edit_json(t, lambda c: c["training"].append(dict(c["training"][_position(t, "mr_1")])))


def _break_bad_name(t):
    p = _position(t, "mr_1")
    edit_json(t, lambda c: c["training"][p].update(image="./imagesTr/mr_1.nii", label="./labelsTr/mr_1.nii"))


def _break_escape(t):
    p = _position(t, "mr_1")
    edit_json(t, lambda c: c["training"][p].update(image="../outside.nii.gz", label="./labelsTr/mr_1.nii.gz"))


def _break_escape_label(t):
    p = _position(t, "mr_2")
    edit_json(t, lambda c: c["training"][p].update(label="./labelsTr/../../elsewhere/mr_2.nii.gz"))


def _break_symlink(t):
    outside = t.parent.parent / "outside_0000.nii.gz"
    shutil.move(t / "imagesTr/mr_1_0000.nii.gz", outside)
    os.symlink(outside, t / "imagesTr/mr_1_0000.nii.gz")


def _break_extra_channel(t):
    shutil.copy(t / "imagesTr/ct_000_0000.nii.gz", t / "imagesTr/ct_000_0001.nii.gz")


def _break_garbage(t):
    (t / "labelsTr/mr_1.nii.gz").write_bytes(b"this is not an image\n" * 50)


def _break_truncated(t):
    p = t / "imagesTr/mr_1_0001.nii.gz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _break_crc(t):
    p = t / "imagesTr/mr_2_0000.nii.gz"
    data = bytearray(p.read_bytes())
    data[-8] ^= 0xFF  # first byte of the CRC32 trailer
    p.write_bytes(bytes(data))


def _break_huge_header(t):
    patch_header(t / "labelsTr/mr_2.nii.gz", dim=(3, 30000, 30000, 30000, 1, 1, 1, 1))


def _break_nan_pixdim(t):
    patch_header(t / "labelsTr/mr_1.nii.gz", pixdim2=float("nan"))


def _break_negative_pixdim(t):
    patch_header(t / "imagesTr/mr_2_0001.nii.gz", pixdim3=-2.5)


def _break_infinite_qoffset(t):
    patch_header(t / "imagesTr/mr_1_0000.nii.gz", sform_code=0, qoffset=(float("-inf"), 0.0, 0.0))


def _break_degenerate_sform(t):
    # a zero first row plus an infinite offset: ITK's SVD of this sform never returns
    patch_header(t / "imagesTr/mr_2_0000.nii.gz", sform_code=1,
                 srow=(0.0, 0.0, 0.0, float("-inf"), 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0))


def _break_2d(t):
    rewrite(t / "labelsTr/mr_1.nii.gz", lambda a: a[a.shape[0] // 2])


def _break_4d(t):
    p = t / "imagesTr/mr_1_0000.nii.gz"
    image = sitk.ReadImage(str(p))
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(p), useCompression=True)  # 2 time points


def _break_vector(t):
    p = t / "imagesTr/mr_2_0001.nii.gz"
    image = sitk.ReadImage(str(p))
    a = sitk.GetArrayFromImage(image)
    out = sitk.GetImageFromArray(np.stack([a, a, a], axis=-1), isVector=True)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(p), useCompression=True)


def _geometry(change):
    return lambda t: rewrite(t / "labelsTr/mr_1.nii.gz", lambda a: a, geometry=change)


def _spacing(img):
    img.SetSpacing((img.GetSpacing()[0], img.GetSpacing()[1], img.GetSpacing()[2] * 1.5))


def _origin(img):
    img.SetOrigin((img.GetOrigin()[0] + 2.0, *img.GetOrigin()[1:]))


def _direction(img):
    d = list(img.GetDirection())
    img.SetDirection((-d[0], -d[1], -d[2], *d[3:]))


def _break_size(t):
    rewrite(t / "labelsTr/mr_1.nii.gz", lambda a: np.ascontiguousarray(a[:-1]))


def _break_channel_geometry(t):
    rewrite(t / "imagesTr/mr_2_0001.nii.gz", lambda a: a, geometry=_origin)


def _break_nan(t):
    def nan(a):
        a = a.copy()
        a[a.shape[0] // 2, 5, 5:8] = np.nan
        a[0, 0, 0] = np.inf
        return a
    rewrite(t / "imagesTr/mr_1_0000.nii.gz", nan)


def _break_float_label(t):
    def half(a):
        a = a.astype(np.float32)
        a[a == 2] = 0.5
        return a
    rewrite(t / "labelsTr/mr_2.nii.gz", half)


def _break_label_7(t):
    def seven(a):
        a = a.copy()
        a[a.shape[0] // 2, a.shape[1] // 2, a.shape[2] // 2] = 7
        return a
    rewrite(t / "labelsTr/mr_1.nii.gz", seven)


def _break_255(t):
    rewrite(t / "labelsTr/mr_2.nii.gz", lambda a: np.where(a > 0, 255, 0).astype(np.uint8))


def _break_empty_image(t):
    rewrite(t / "imagesTr/ct_000_0000.nii.gz", np.zeros_like)


def _break_no_foreground(t):
    rewrite(t / "labelsTr/mr_2.nii.gz", np.zeros_like)


def _break_json_missing(t):
    (t / "dataset.json").unlink()


def _break_json_syntax(t):
    (t / "dataset.json").write_text('{"name": "x", "training": [}')


def _break_json_entry(t):
    edit_json(t, lambda c: c["training"].append("./imagesTr/mr_3.nii.gz"))


def _break_json_label_key(t):
    edit_json(t, lambda c: c["labels"].__setitem__("one", "x"))


def _break_json_training_type(t):
    edit_json(t, lambda c: c.__setitem__("training", {"image": "./imagesTr/mr_1.nii.gz"}))


J = "dataset.json"
M1_0, M1_1, M1_L = "imagesTr/mr_1_0000.nii.gz", "imagesTr/mr_1_0001.nii.gz", "labelsTr/mr_1.nii.gz"
M2_0, M2_1, M2_L = "imagesTr/mr_2_0000.nii.gz", "imagesTr/mr_2_0001.nii.gz", "labelsTr/mr_2.nii.gz"

CORPUS: dict[str, Defect] = {
    # ---- dataset.json -------------------------------------------------------------------------
    "json_missing": Defect("mr", _break_json_missing, (
        Expect("dataset_json_missing", None, J, ("missing",)),)),
    "json_syntax": Defect("mr", _break_json_syntax, (
        Expect("dataset_json_malformed", None, J, ("not valid JSON", "line 1")),)),
    "json_entry_not_object": Defect("mr", _break_json_entry, (
        Expect("dataset_json_malformed", None, J, ("training[2]", '"image"', "'./imagesTr/mr_3.nii.gz'")),)),
    "json_label_key": Defect("mr", _break_json_label_key, (
        Expect("dataset_json_malformed", None, J, ("labels", "'one'", "integer")),)),
    "json_training_type": Defect("mr", _break_json_training_type, (
        Expect("dataset_json_malformed", None, J, ("training", "list", "dict")),)),
    "json_missing_labels": Defect("mr", _drop_key("labels"), (
        Expect("dataset_json_missing_key", None, J, ("labels", "training, modality, labels")),)),
    "json_missing_training": Defect("mr", _drop_key("training"), (
        Expect("dataset_json_missing_key", None, J, ("training",)),)),
    "labels_not_consecutive": Defect("mr", _labels({"0": "bg", "1": "edema", "2": "core", "4": "x"}), (
        Expect("labels_not_consecutive", None, J, ("[0, 1, 2, 4]", "[0, 1, 2, 3]")),)),
    "labels_0_2": Defect("mr", _labels({"0": "background", "2": "x"}), (
        Expect("labels_not_consecutive", None, J, ("[0, 2]", "[0, 1]")),
        Expect("undeclared_label", "mr_1", M1_L, ("1", "declared: [0, 2]")),
        Expect("undeclared_label", "mr_2", M2_L, ("1", "declared: [0, 2]")))),
    # ---- the listing --------------------------------------------------------------------------
    "stray_image": Defect("mr", _break_stray, (
        Expect("stray_file", None, "imagesTr/mr_9_0000.nii.gz", ("not listed", "2 listed cases")),)),
    "stray_label": Defect("mr", _break_stray_label, (
        Expect("stray_file", None, "labelsTr/mr_9.nii.gz", ("not listed",)),)),
    "duplicate_identifier": Defect("mr", _break_duplicate, (
        Expect("duplicate_identifier", "mr_1", J, ("training[2]", "'mr_1'", "first at training[")),)),
    "bad_file_name": Defect("mr", _break_bad_name, (
        Expect("bad_file_name", "mr_1", J, ("'./imagesTr/mr_1.nii'", ".nii.gz")),
        Expect("bad_file_name", "mr_1", J, ("'./labelsTr/mr_1.nii'", ".nii.gz")))),
    "path_escapes_image": Defect("mr", _break_escape, (
        Expect("path_escapes_task", "outside", J, ("'../outside.nii.gz'", "leaves the task folder")),),
        extra_ok=frozenset({"stray_file"})),
    "path_escapes_label": Defect("mr", _break_escape_label, (
        Expect("path_escapes_task", "mr_2", J, ("'./labelsTr/../../elsewhere/mr_2.nii.gz'", "leaves")),)),
    "path_escapes_symlink": Defect("mr", _break_symlink, (
        Expect("path_escapes_task", "mr_1", M1_0, ("symlink", "outside_0000.nii.gz", "outside the task folder")),)),
    "missing_label": Defect("mr", _break_missing_label, (
        Expect("missing_file", "mr_1", M1_L, ("does not exist",)),)),
    "missing_channel": Defect("mr", _break_missing_channel, (
        Expect("missing_file", "mr_2", M2_1, ("does not exist",)),)),
    "extra_channel": Defect("ct1", _break_extra_channel, (
        Expect("channel_count_mismatch", "ct_000", "imagesTr/ct_000_0001.nii.gz",
               ("channel 1", "declares 1 modalit")),)),
    # ---- the files ----------------------------------------------------------------------------
    "unreadable": Defect("mr", _break_garbage, (
        Expect("unreadable_file", "mr_1", M1_L, ()),)),
    "truncated": Defect("mr", _break_truncated, (
        Expect("truncated_file", "mr_1", M1_1, ("truncated",)),)),
    "crc": Defect("mr", _break_crc, (
        Expect("corrupt_file", "mr_2", M2_0, ("CRC",)),)),
    "huge_header": Defect("mr", _break_huge_header, (
        Expect("image_too_large", "mr_2", M2_L, ("30000 x 30000 x 30000", "limit of 8,589,934,592")),)),
    "over_limit": Defect("mr", lambda t: None, (
        Expect("image_too_large", "mr_1", M1_0, ("limit of 10,000",)),
        Expect("image_too_large", "mr_2", M2_0, ("limit of 10,000",))), max_image_bytes=10_000),
    "nan_pixdim": Defect("mr", _break_nan_pixdim, (
        Expect("invalid_geometry", "mr_1", M1_L, ("pixdim[2]", "nan", "finite number > 0")),)),
    "negative_pixdim": Defect("mr", _break_negative_pixdim, (
        Expect("invalid_geometry", "mr_2", M2_1, ("pixdim[3]", "-2.5", "finite number > 0")),)),
    "infinite_qoffset": Defect("mr", _break_infinite_qoffset, (
        Expect("invalid_geometry", "mr_1", M1_0, ("qoffset_x = -inf", "qform_code 1", "finite")),)),
    "degenerate_sform": Defect("mr", _break_degenerate_sform, (
        Expect("invalid_geometry", "mr_2", M2_0, ("srow_x[3] = -inf", "sform_code 1", "finite")),)),
    "label_2d": Defect("mr", _break_2d, (
        Expect("not_3d", "mr_1", M1_L, ("expected a 3D image, found 2D",)),)),
    "image_4d": Defect("mr", _break_4d, (
        Expect("not_3d", "mr_1", M1_0, ("expected a 3D image, found 4D",)),)),
    "vector_image": Defect("mr", _break_vector, (
        Expect("not_scalar", "mr_2", M2_1, ("expected one value per voxel, found 3",)),)),
    "label_spacing": Defect("mr", _geometry(_spacing), (
        Expect("geometry_mismatch", "mr_1", M1_L, ("spacing", M1_0)),)),
    "label_origin": Defect("mr", _geometry(_origin), (
        Expect("geometry_mismatch", "mr_1", M1_L, ("origin", M1_0)),)),
    "label_direction": Defect("mr", _geometry(_direction), (
        Expect("geometry_mismatch", "mr_1", M1_L, ("direction", M1_0)),)),
    "label_size": Defect("mr", _break_size, (
        Expect("geometry_mismatch", "mr_1", M1_L, ("size", M1_0)),)),
    "channel_origin": Defect("mr", _break_channel_geometry, (
        Expect("geometry_mismatch", "mr_2", M2_1, ("origin", M2_0)),)),
    "nan_voxels": Defect("mr", _break_nan, (
        Expect("nonfinite_voxels", "mr_1", M1_0, ("4 NaN/Inf voxels", "expected none")),)),
    "float_label": Defect("mr", _break_float_label, (
        Expect("non_integer_label", "mr_2", M2_L, ("whole numbers", "0.5")),)),
    "label_7": Defect("mr", _break_label_7, (
        Expect("undeclared_label", "mr_1", M1_L, ("values 7", "declared: [0, 1, 2]")),)),
    "mask_255": Defect("mr", _break_255, (
        Expect("undeclared_label", "mr_2", M2_L, ("values 255", "declared: [0, 1, 2]")),
        Expect("mask_like_label", "mr_2", M2_L, ("0 and 255", "255 to 1")))),
    "empty_image": Defect("ct1", _break_empty_image, (
        Expect("empty_image", "ct_000", "imagesTr/ct_000_0000.nii.gz", ("every voxel", "is 0")),)),
    "no_foreground": Defect("mr", _break_no_foreground, (
        Expect("no_foreground", "mr_2", M2_L, ("no foreground",)),)),
    "label_outside_crop": Defect("ct2", lambda t: None, (
        Expect("label_outside_crop", "ct_001", "labelsTr/ct_001.nii.gz", ("27 of 449",)),)),
}

# checks tested by a dedicated test below rather than by a corpus entry
DEDICATED = {"analysis_failed"}


def _key(f) -> tuple:
    return (f.check, f.severity, f.case)


def assert_findings(task: Path, findings, defect: Defect) -> None:
    """The findings are exactly the expected ones (check, severity, case), each message names its
    file and gives the expected/found values."""
    found = sorted((_key(f) for f in findings if f.check not in defect.extra_ok), key=repr)
    wanted = sorted(((e.check, CHECKS[e.check][0], e.case) for e in defect.expect), key=repr)
    assert found == wanted, "\n".join(f"{f.check} {f.case}: {f.message}" for f in findings)
    unmatched = [f for f in findings if f.check not in defect.extra_ok]
    for e in defect.expect:
        for f in unmatched:
            if _key(f) == (e.check, CHECKS[e.check][0], e.case) and str(task / e.file) in f.message \
                    and all(x in f.message for x in e.fragments):
                unmatched.remove(f)
                break
        else:
            pytest.fail(f"no {e.check} finding naming {task / e.file} with {e.fragments}:\n"
                        + "\n".join(f"{f.check} {f.case}: {f.message}" for f in findings))


@pytest.mark.parametrize("name", list(CORPUS))
def test_check_corpus(name, make_raw_task):
    defect = CORPUS[name]
    task = base_task(make_raw_task, defect.base)
    defect.breaker(task)
    kwargs = {} if defect.max_image_bytes is None else {"max_image_bytes": defect.max_image_bytes}
    findings = check_task(task, workers=1, **kwargs)
    assert_findings(task, findings, defect)


@pytest.mark.parametrize("kind", ["mr", "ct1"])
def test_clean_tasks_have_no_findings(kind, make_raw_task):
    assert check_task(base_task(make_raw_task, kind), workers=1) == []


def test_analysis_failed(make_raw_task, monkeypatch):
    """An unexpected exception in the analysis is a catalog bug: an error finding, not a crash."""
    task = base_task(make_raw_task, "mr")

    def boom(*args, **kwargs):
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr("catalog.casework.CropAccumulator.finish", boom)
    findings = check_task(task, workers=1)
    assert sorted(_key(f) for f in findings) == [("analysis_failed", ERROR, "mr_1"), ("analysis_failed", ERROR, "mr_2")]
    for f in findings:
        assert "RuntimeError: synthetic failure" in f.message
        assert str(task / f"labelsTr/{f.case}.nii.gz") in f.message or f"imagesTr/{f.case}_0000" in f.message


def test_check_task_with_worker_processes(make_raw_task):
    """The process pool gives the same findings, in the same (dataset.json) order."""
    task = base_task(make_raw_task, "mr")
    _break_label_7(task)
    _break_crc(task)
    serial = check_task(task, workers=1)
    assert sorted(_key(f) for f in serial) == [("corrupt_file", ERROR, "mr_2"), ("undeclared_label", ERROR, "mr_1")]
    assert check_task(task, workers=2) == serial


def test_geometry_problems():
    """The check of SimpleITK's geometry (behind the raw-header guard, for other readers)."""
    from catalog.checks import geometry_problems

    good = {"spacing": (1.0, 1.0, 2.5), "origin": (0.0, -3.0, 7.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}
    assert geometry_problems(good) == []
    assert geometry_problems({**good, "spacing": (1.0, 0.0, 2.5)}) == [
        "spacing (1, 0, 2.5) (expected finite values > 0)"]
    assert geometry_problems({**good, "origin": (0.0, float("nan"), 7.0)}) == [
        "origin (0, nan, 7) (expected finite values)"]
    assert geometry_problems({**good, "direction": (1, 0, 0, 1, 0, 0, 0, 0, 1)}) == [
        "direction (1, 0, 0, 1, 0, 0, 0, 0, 1) is singular (expected a rotation, |det| = 1)"]


def test_every_check_is_tested():
    """Each check in CHECKS is produced by a corpus entry or has a dedicated test."""
    covered = {e.check for d in CORPUS.values() for e in d.expect} | DEDICATED
    assert covered == set(CHECKS), f"untested: {set(CHECKS) - covered}; unknown: {covered - set(CHECKS)}"


def test_severities_are_known():
    assert {s for s, _ in CHECKS.values()} <= {ERROR, WARNING, HINT}


# ------------------------------------------------------------------------------------------------
# the same findings through an ingest, on both backends
# ------------------------------------------------------------------------------------------------

runner = CliRunner()


def _cli(*args):
    from catalog.cli import app

    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _rows(engine, identifier: str) -> dict:
    """Every stored row of a case, as plain tuples (to compare before/after)."""
    from catalog.models import Case, CaseChannel, CaseClass, CaseFile, CaseRegion

    with Session(engine) as s:
        case = s.scalar(select(Case).where(Case.identifier == identifier))
        cols = lambda m: [c.key for c in m.__table__.columns]  # noqa: E731
        out = {"status": case.status}
        for model in (CaseFile, CaseClass, CaseRegion, CaseChannel):
            rows = s.scalars(select(model).where(model.case_id == case.id)).all()
            out[model.__tablename__] = sorted(tuple(getattr(r, c) for c in cols(model)) for r in rows)
        out["case"] = tuple(getattr(case, c) for c in cols(Case) if c not in ("status", "ingest_run_id"))
        return out


def _findings(engine) -> list:
    from catalog.models import Finding

    with Session(engine) as s:
        return [(f.case_identifier, f.check, f.severity, f.path, f.message)
                for f in s.scalars(select(Finding).order_by(Finding.id))]


def test_ingest_stores_findings_and_other_cases_proceed(db_url, make_raw_task):
    from catalog.db import make_engine
    from catalog.ingest import ingest_task

    task = base_task(make_raw_task, "mr")
    _break_label_7(task)
    _break_stray(task)
    engine = make_engine(db_url)
    try:
        summary = ingest_task(engine, task, workers=1)
        assert (summary.new, summary.failed) == (1, 1)
        assert summary.findings_by_check == {"undeclared_label": 1, "stray_file": 1}
        stored = _findings(engine)
        assert sorted((r[:4] for r in stored), key=repr) == sorted([
            (None, "stray_file", WARNING, "imagesTr/mr_9_0000.nii.gz"),
            ("mr_1", "undeclared_label", ERROR, str(task / M1_L)),
        ], key=repr)
        message = next(r[4] for r in stored if r[1] == "undeclared_label")
        assert str(task / M1_L) in message and "values 7" in message and "declared: [0, 1, 2]" in message
        assert _rows(engine, "mr_1")["status"] == "failed"
        ok = _rows(engine, "mr_2")
        assert ok["status"] == "ok" and len(ok["case_files"]) == 3 and len(ok["case_channels"]) == 2
        assert len(ok["case_classes"]) == 2
        # the same findings as `catalog check`
        assert sorted((_key(f) for f in check_task(task, workers=1)), key=repr) == sorted(
            ((r[1], r[2], r[0]) for r in stored), key=repr)
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", ["json_syntax", "crc", "huge_header", "nan_voxels", "float_label",
                                  "duplicate_identifier", "path_escapes_symlink", "label_size", "empty_image"])
def test_ingest_finding_rows_match_check(name, make_raw_task, sqlite_url):
    """A sample of the corpus through a real ingest: the stored rows are the expected findings."""
    from catalog.db import make_engine
    from catalog.errors import DatasetLayoutError
    from catalog.ingest import ingest_task

    defect = CORPUS[name]
    task = base_task(make_raw_task, defect.base)
    defect.breaker(task)
    engine = make_engine(sqlite_url)
    try:
        if any(e.check.startswith("dataset_json") for e in defect.expect):
            with pytest.raises(DatasetLayoutError) as info:
                ingest_task(engine, task, workers=1)
            assert info.value.check == defect.expect[0].check and str(task / J) in str(info.value)
            return
        summary = ingest_task(engine, task, workers=1)
        rows = _findings(engine)

        class Row:
            def __init__(self, r):
                self.case, self.check, self.severity, self.path, self.message = r

        assert_findings(task, [Row(r) for r in rows], defect)
        assert summary.failed == len({e.case for e in defect.expect if CHECKS[e.check][0] == ERROR})
    finally:
        engine.dispose()


def test_cli_exit_codes_and_findings_json(db_url, make_raw_task, tmp_path):
    clean = base_task(make_raw_task, "ct1")
    result = _cli("ingest", clean, "--db", db_url, "--workers", 1, "--strict")
    assert result.exit_code == 0, result.output
    assert json.loads(_cli("findings", clean.name, "--db", db_url, "--format", "json").output) == []
    assert _cli("check", clean, "--strict", "--workers", 1).exit_code == 0

    warned = make_raw_task("ct", 503, n_cases=2, shape_scale=SCALE)  # ct_001: label_outside_crop
    result = _cli("ingest", warned, "--db", db_url, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "label_outside_crop (warning) x1" in result.output
    result = _cli("ingest", warned, "--db", db_url, "--workers", 1, "--strict", "--force")
    assert result.exit_code == 1, result.output
    assert _cli("check", warned, "--workers", 1).exit_code == 0
    assert _cli("check", warned, "--workers", 1, "--strict").exit_code == 1

    broken = make_raw_task("mr", 504, n_cases=2, shape_scale=SCALE)
    _break_nan(broken)
    _break_crc(broken)
    result = _cli("ingest", broken, "--db", db_url, "--workers", 1)
    assert result.exit_code == 1, result.output
    assert "corrupt_file (error) x1" in result.output and "nonfinite_voxels (error) x1" in result.output
    listed = json.loads(_cli("findings", broken.name, "--db", db_url, "--format", "json").output)
    assert sorted((r["case"], r["check"], r["severity"]) for r in listed) == [
        ("mr_1", "nonfinite_voxels", ERROR), ("mr_2", "corrupt_file", ERROR)]
    for r in listed:
        assert r["task"] == broken.name and r["path"] and r["path"] in r["message"]
    table = _cli("findings", broken.name, "--db", db_url).output
    assert "nonfinite_voxels" in table and "corrupt_file" in table
    check = _cli("check", broken, "--workers", 1, "--format", "json")
    assert check.exit_code == 1
    assert sorted(r["check"] for r in json.loads(check.output)) == ["corrupt_file", "nonfinite_voxels"]

    # dataset.json unusable: an error message and exit 1, never a traceback
    (broken / "dataset.json").write_text("{")
    result = _cli("ingest", broken, "--db", db_url, "--workers", 1)
    assert result.exit_code == 1 and "not valid JSON" in result.output
    result = _cli("check", broken, "--workers", 1)
    assert result.exit_code == 1 and "dataset_json_malformed" in result.output


def test_reingest_keeps_rows_of_a_broken_case_and_export_refuses(db_url, make_raw_task, tmp_path):
    """Breaking a case that was ingested fine keeps its rows (stale); export refuses it, names
    it and says how to proceed; --skip-failed exports the rest and says so."""
    from catalog.db import make_engine
    from catalog.errors import ExportRefusedError
    from catalog.export.nnunet_v1 import export_nnunet_v1
    from catalog.ingest import ingest_task

    task = base_task(make_raw_task, "mr")
    pristine = (task / M1_0).read_bytes()
    engine = make_engine(db_url)
    try:
        assert ingest_task(engine, task, workers=1).new == 2
        before = _rows(engine, "mr_1")
        assert before["status"] == "ok" and before["case_classes"] and before["case_channels"]

        _break_nan(task)
        summary = ingest_task(engine, task, workers=1)
        assert (summary.failed, summary.unchanged) == (1, 1)
        after = _rows(engine, "mr_1")
        assert after["status"] == "stale"
        assert {k: v for k, v in after.items() if k != "status"} == {k: v for k, v in before.items() if k != "status"}
        assert [r[1] for r in _findings(engine)] == ["nonfinite_voxels"]

        with pytest.raises(ExportRefusedError) as info:
            export_nnunet_v1(engine, task.name, str(tmp_path / "out"), workers=1)
        message = str(info.value)
        assert "mr_1" in message and "NaN/Inf" in message and "--skip-failed" in message
        assert "catalog ingest" in message

        result = _cli("export", "nnunet-v1", task.name, "--db", db_url, "--out", tmp_path / "out", "-j", 1)
        assert result.exit_code == 1 and "mr_1" in result.output and "--skip-failed" in result.output
        result = _cli("export", "nnunet-v1", task.name, "--db", db_url, "--out", tmp_path / "out", "-j", 1,
                      "--skip-failed")
        assert result.exit_code == 0, result.output
        assert "exported 1 cases" in result.output and "skipped mr_1" in result.output
        assert sorted(p.name for p in (tmp_path / "out").glob("*.npz")) == ["mr_2.npz"]

        # a second broken run still keeps the rows; fixing the file brings the case back
        summary = ingest_task(engine, task, workers=1)
        assert _rows(engine, "mr_1") == after
        (task / M1_0).write_bytes(pristine)
        summary = ingest_task(engine, task, workers=1)
        assert summary.failed == 0 and _rows(engine, "mr_1")["status"] == "ok"
        assert _findings(engine) == []
    finally:
        engine.dispose()


def test_ingest_analysis_failed_is_stored(monkeypatch, make_raw_task, sqlite_url):
    from catalog.db import make_engine
    from catalog.ingest import ingest_task

    task = base_task(make_raw_task, "ct1")

    def boom(*args, **kwargs):
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr("catalog.casework.CropAccumulator.finish", boom)
    engine = make_engine(sqlite_url)
    try:
        summary = ingest_task(engine, task, workers=1)
        assert summary.failed == 1
        rows = _findings(engine)
        assert [(r[0], r[1], r[2]) for r in rows] == [("ct_000", "analysis_failed", ERROR)]
        assert "RuntimeError: synthetic failure" in rows[0][4]
        assert _rows(engine, "ct_000")["status"] == "failed"
    finally:
        engine.dispose()


def test_symlinked_folders(make_raw_task):
    """A case folder that is a symlink is followed like a file symlink: to outside the task, each
    of its files escapes; to a folder inside the task, nothing is reported."""
    task = base_task(make_raw_task, "mr")
    outside = task.parent.parent / "labels_elsewhere"
    shutil.move(task / "labelsTr", outside)
    os.symlink(outside, task / "labelsTr")
    escapes = [f for f in read_layout(task).findings if f.check == "path_escapes_task"]
    assert sorted(f.case for f in escapes) == ["mr_1", "mr_2"]
    for f in escapes:
        assert f"{task}/labelsTr/{f.case}.nii.gz: is a symlink to {outside}/{f.case}.nii.gz" in f.message

    os.unlink(task / "labelsTr")
    shutil.move(outside, task / "labels_real")
    os.symlink(task / "labels_real", task / "labelsTr")
    assert [f for f in read_layout(task).findings if f.check == "path_escapes_task"] == []
