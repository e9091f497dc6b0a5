"""Fuzzing the ingest with corrupted NIfTI files (issue 4).

Each example takes a small generated task (1 CT case or 2 MR cases), corrupts one to three of
its .nii.gz files -- random NIfTI-1 header field values (dims, datatype, bitpix, vox_offset,
pixdim, scl_slope/scl_inter, qform/sform codes and parameters, ...), truncation at a random
point, random byte flips in the compressed stream or in the decompressed bytes re-gzipped --
and ingests it, either into an empty catalog or into one that already holds the task's good
rows. It asserts that

* the ingest returns (no exception escapes: bad data only ever becomes findings), and
* no case is half written: every listed case is either `ok` with a complete set of rows (a
  case_files row for each of its files, with the files' current hashes; a case_classes row for
  every declared class; a case_channels row for every channel) and no error finding, or
  `failed` (no analysis rows) / `stale` (exactly the rows it had before) with an error finding.

Examples: CATALOG_FUZZ_EXAMPLES (default 80, about 30 s on 2 cores) on SQLite and
CATALOG_FUZZ_PG_EXAMPLES (default 8) on PostgreSQL. Reproducible: derandomize=True, no example
database. The number of corrupted files is printed (run with -s to see it).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from catalog.checks import CHECKS, ERROR

EXAMPLES = int(os.environ.get("CATALOG_FUZZ_EXAMPLES", "80"))
PG_EXAMPLES = int(os.environ.get("CATALOG_FUZZ_PG_EXAMPLES", "8"))
# Headers may claim any size: refuse above 64 MB (the check is the same at 8 GB, only slower to
# reach when a header without a parseable size makes SimpleITK pad a short file with zeros).
MAX_IMAGE_BYTES = 64 << 20
SCALE = 0.35  # tiny cases: the fuzzing is about the file format, not the analysis
KINDS = {"ct": dict(kind="ct", task_id=701, n_cases=1), "mr": dict(kind="mr", task_id=702, n_cases=2)}

FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                     suppress_health_check=list(HealthCheck))

COUNTS = {"examples": 0, "files": 0, "status": Counter(), "checks": Counter()}


# ------------------------------------------------------------------------------------------------
# corruptions
# ------------------------------------------------------------------------------------------------

# NIfTI-1 header fields (little-endian, as SimpleITK writes): name -> (offset, struct format)
FIELDS = {
    "sizeof_hdr": (0, "i"), "dim_info": (39, "B"),
    **{f"dim{i}": (40 + 2 * i, "h") for i in range(8)},
    "intent_code": (68, "h"), "datatype": (70, "h"), "bitpix": (72, "h"),
    **{f"pixdim{i}": (76 + 4 * i, "f") for i in range(8)},
    "vox_offset": (108, "f"), "scl_slope": (112, "f"), "scl_inter": (116, "f"),
    "xyzt_units": (123, "B"), "qform_code": (252, "h"), "sform_code": (254, "h"),
    **{f"quatern_{c}": (256 + 4 * i, "f") for i, c in enumerate("bcd")},
    **{f"qoffset_{c}": (268 + 4 * i, "f") for i, c in enumerate("xyz")},
    **{f"srow_{r}{i}": (280 + 16 * j + 4 * i, "f") for j, r in enumerate("xyz") for i in range(4)},
    "magic": (344, "4s"),
}

NIFTI_TYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304]

int16s = st.one_of(st.sampled_from([-32768, -1, 0, 1, 2, 3, 4, 5, 7, 8, 255, 32767]),
                   st.integers(-32768, 32767))
floats = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, 3.4e38, float("nan"),
                                    float("inf"), float("-inf")]),
                   st.floats(width=32, allow_nan=True, allow_infinity=True))


def field_values(name: str):
    fmt = FIELDS[name][1]
    if fmt == "B":
        return st.integers(0, 255)
    if name == "datatype":
        return st.one_of(st.sampled_from(NIFTI_TYPES), int16s)
    if name == "bitpix":
        return st.one_of(st.sampled_from([0, 1, 8, 16, 24, 32, 64, 128, 256]), int16s)
    if name == "intent_code":
        return st.one_of(st.sampled_from([0, 1004, 1005, 1007, 2001]), int16s)
    if name in ("qform_code", "sform_code"):
        return st.one_of(st.integers(0, 4), int16s)
    if name == "dim0":
        return st.one_of(st.integers(-1, 8), int16s)
    if name.startswith("dim"):
        return st.one_of(st.integers(-2, 64), int16s)
    if name == "vox_offset":
        return st.one_of(st.sampled_from([0.0, 348.0, 352.0, 351.5, 356.0, 1e9, -352.0, float("nan")]),
                         st.integers(0, 5000).map(float), floats)
    if name == "magic":
        return st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0", b"xxxx"])
    if name == "sizeof_hdr":
        return st.one_of(st.sampled_from([348, 540, 0, -1, 0x5C010000]), st.integers(-2**31, 2**31 - 1))
    if fmt == "h":
        return int16s
    return floats


@st.composite
def header_edit(draw):
    edits = draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4, unique=True))
    return ("header", [(name, draw(field_values(name))) for name in edits])


@st.composite
def corruption(draw):
    """A description of how to corrupt one file (applied by `corrupt`)."""
    kind = draw(st.sampled_from(["header", "header", "header", "truncate", "flip_gz", "flip_raw",
                                 "flip_raw_header", "garbage"]))
    if kind == "header":
        return draw(header_edit())
    if kind == "truncate":
        return ("truncate", draw(st.floats(0.0, 1.0)))
    if kind == "garbage":
        return ("garbage", draw(st.binary(min_size=0, max_size=600)))
    flips = draw(st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)),
                          min_size=1, max_size=6))
    return (kind, flips)


def corrupt(path: Path, how) -> None:
    data = path.read_bytes()
    kind, arg = how
    if kind == "truncate":
        data = data[: int(len(data) * arg)]
    elif kind == "garbage":
        data = arg
    elif kind == "flip_gz":
        data = _flip(data, arg)
    else:
        raw = gzip.decompress(data)
        if kind == "header":
            raw = bytearray(raw)
            for name, value in arg:
                offset, fmt = FIELDS[name]
                struct.pack_into("<" + fmt, raw, offset, value)
            raw = bytes(raw)
        elif kind == "flip_raw_header":
            raw = _flip(raw[:352], arg) + raw[352:]
        else:  # flip_raw: anywhere in the decompressed bytes
            raw = _flip(raw, arg)
        data = gzip.compress(raw, compresslevel=1, mtime=0)
    path.write_bytes(data)


def _flip(data: bytes, flips) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for where, mask in flips:
        out[int(where * len(out))] ^= mask
    return bytes(out)


# ------------------------------------------------------------------------------------------------
# the tasks and a catalog that already holds them
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Generated tasks and a SQLite catalog with their good rows (to copy per example)."""
    from catalog.db import make_engine
    from catalog.ingest import ingest_task
    from catalog.synthetic import make_task

    base = tmp_path_factory.mktemp("fuzz")
    tasks = {k: make_task(base / "pristine", shape_scale=SCALE, **kw) for k, kw in KINDS.items()}
    url = f"sqlite:///{base / 'template.db'}"
    engine = make_engine(url)
    try:
        for task in tasks.values():
            summary = ingest_task(engine, task, workers=1)
            assert summary.failed == 0 and not summary.findings, summary.findings
        good = {k: _snapshot(engine, task.name) for k, task in tasks.items()}
    finally:
        engine.dispose()
    return {"base": base, "tasks": tasks, "template": base / "template.db", "good": good}


def _snapshot(engine, task_name: str) -> dict:
    """Every stored row of every case of a task (plain tuples), by case identifier."""
    from catalog.models import Case, CaseChannel, CaseClass, CaseFile, CaseRegion, Finding, Task

    def values(row, skip=()):
        return tuple((c.key, getattr(row, c.key)) for c in row.__table__.columns if c.key not in skip)

    with Session(engine) as s:
        task = s.scalar(select(Task).where(Task.name == task_name))
        out = {}
        for case in s.scalars(select(Case).where(Case.task_id == task.id)):
            rows = {"case": values(case, ("status", "ingest_run_id", "listed_position")), "status": case.status}
            for model in (CaseFile, CaseClass, CaseRegion, CaseChannel):
                rows[model.__tablename__] = sorted(
                    values(r) for r in s.scalars(select(model).where(model.case_id == case.id)))
            rows["errors"] = [f.check for f in s.scalars(select(Finding).where(
                Finding.task_id == task.id, Finding.case_identifier == case.identifier,
                Finding.severity == ERROR))]
            out[case.identifier] = rows
        return out


def _draw_example(data, kinds=("ct", "mr")):
    kind = data.draw(st.sampled_from(kinds), label="task")
    preloaded = data.draw(st.booleans(), label="catalog already holds the good rows")
    return kind, preloaded


def _corrupt_task(data, task: Path) -> list[tuple[str, object]]:
    files = sorted(str(p.relative_to(task)) for p in task.glob("*Tr/*.nii.gz"))
    chosen = data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=3, unique=True), label="files")
    done = []
    for rel in chosen:
        how = data.draw(corruption(), label=rel)
        corrupt(task / rel, how)
        done.append((rel, how))
    return done


def _verify(engine, task: Path, before: dict | None, summary) -> None:
    """The no-half-written-case invariant (see the module docstring)."""
    from catalog.layout import read_layout

    layout = read_layout(task)
    after = _snapshot(engine, task.name)
    assert set(after) == {c.identifier for c in layout.cases}
    for case in layout.cases:
        rows = after[case.identifier]
        status = rows["status"]
        files = (*case.images, case.label)
        if status == "ok":
            assert not rows["errors"], (case.identifier, rows["errors"])
            stored = {dict(r)["path"]: dict(r) for r in rows["case_files"]}
            assert sorted(stored) == sorted(files)
            for rel in files:
                digest = hashlib.sha256((task / rel).read_bytes()).hexdigest()
                assert stored[rel]["sha256"] == digest, f"{rel}: stored hash is not the file's"
            assert sorted(dict(r)["class_value"] for r in rows["case_classes"]) == sorted(layout.class_values)
            assert sorted(dict(r)["channel"] for r in rows["case_channels"]) == list(range(len(case.images)))
            facts = dict(rows["case"])
            missing = [k for k in ("analysis_version", "input_digest", "spacing_x", "original_size_z", "bbox_z0",
                                   "cropped_size_x", "nonzero_voxels", "foreground_voxels") if facts[k] is None]
            assert not missing, f"{case.identifier}: ok but {missing} not stored"
        elif status == "failed":
            assert rows["errors"], f"{case.identifier} failed without an error finding"
            assert before is None or before[case.identifier]["status"] != "ok"
            assert rows["case_classes"] == rows["case_regions"] == rows["case_channels"] == []
        elif status == "stale":
            assert rows["errors"], f"{case.identifier} stale without an error finding"
            assert before is not None, "stale although the catalog held no rows for it"
            old = before[case.identifier]
            for key in ("case", "case_files", "case_classes", "case_regions", "case_channels"):
                assert rows[key] == old[key], f"{case.identifier}: {key} changed although the case failed"
        else:
            pytest.fail(f"{case.identifier}: status {status!r} after an ingest")
    for f in summary.findings:
        assert f.check in CHECKS and isinstance(f.message, str) and f.message
    return after


def _run_example(engine, task: Path, before: dict | None) -> None:
    from catalog.ingest import ingest_task

    summary = ingest_task(engine, task, workers=1, max_image_bytes=MAX_IMAGE_BYTES)  # must not raise
    after = _verify(engine, task, before, summary)
    COUNTS["status"].update(rows["status"] for rows in after.values())
    COUNTS["checks"].update(f.check for f in summary.findings)
    if before is None:  # every case was read: `catalog check` must find exactly the same
        from catalog.checkrun import check_task

        checked = check_task(task, workers=1, max_image_bytes=MAX_IMAGE_BYTES)
        assert sorted((f.check, f.case, f.message) for f in checked) == sorted(
            (f.check, f.case, f.message) for f in summary.findings)
    # running again changes nothing and still does not raise
    again = ingest_task(engine, task, workers=1, max_image_bytes=MAX_IMAGE_BYTES)
    assert again.new == again.changed == 0
    _verify(engine, task, before, again)


def _fresh_copy(pristine, kind: str, where: Path) -> Path:
    source = pristine["tasks"][kind]
    target = where / source.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target


@settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
@given(data=st.data())
def test_fuzz_ingest_sqlite(pristine, data):
    from catalog.db import make_engine

    kind, preloaded = _draw_example(data)
    work = pristine["base"] / "work"
    work.mkdir(exist_ok=True)
    task = _fresh_copy(pristine, kind, work)
    db = work / "catalog.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if preloaded:
        shutil.copy(pristine["template"], db)
    engine = make_engine(f"sqlite:///{db}")
    try:
        corrupted = _corrupt_task(data, task)
        COUNTS["examples"] += 1
        COUNTS["files"] += len(corrupted)
        _run_example(engine, task, pristine["good"][kind] if preloaded else None)
    finally:
        engine.dispose()


@settings(max_examples=PG_EXAMPLES, **FUZZ_SETTINGS)
@given(data=st.data())
def test_fuzz_ingest_postgres(pristine, pg_engine, data):
    from catalog.ingest import ingest_task
    from catalog.models import Task

    kind, preloaded = _draw_example(data)
    work = pristine["base"] / "work_pg"
    work.mkdir(exist_ok=True)
    task = _fresh_copy(pristine, kind, work)
    with Session(pg_engine) as s, s.begin():
        s.execute(delete(Task))
    before = None
    if preloaded:
        assert ingest_task(pg_engine, task, workers=1).failed == 0
        before = _snapshot(pg_engine, task.name)
    corrupted = _corrupt_task(data, task)
    COUNTS["examples"] += 1
    COUNTS["files"] += len(corrupted)
    _run_example(pg_engine, task, before)


@pytest.fixture(scope="module")
def pg_engine():
    """One fresh PostgreSQL database for the module (emptied per example)."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    from catalog.db import make_engine

    PG_ADMIN_URL = os.environ.get("CATALOG_TEST_PG", "postgresql://127.0.0.1:5432/postgres")
    name = f"catalog_fuzz_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    engine = make_engine(url.render_as_string(hide_password=False))
    yield engine
    engine.dispose()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_fuzz_count_report(capsys):
    """Not a check: prints how many corrupted files the fuzz tests ingested (run with -s)."""
    with capsys.disabled():
        print(f"\nfuzz: {COUNTS['examples']} examples, {COUNTS['files']} corrupted files ingested, "
              f"no uncaught exception; case statuses {dict(COUNTS['status'])}; "
              f"findings {dict(COUNTS['checks'].most_common())}")


def test_corruptions_do_corrupt(tmp_path):
    """The corruption helpers change the bytes they are asked to (a fuzz test of nothing would pass)."""
    import numpy as np
    import SimpleITK as sitk

    path = tmp_path / "x.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5)), str(path),
                    useCompression=True)
    original = path.read_bytes()
    corrupt(path, ("header", [("dim1", 7), ("scl_slope", 2.0)]))
    raw = gzip.decompress(path.read_bytes())
    assert struct.unpack_from("<h", raw, 42)[0] == 7 and struct.unpack_from("<f", raw, 112)[0] == 2.0
    assert raw[352:] == gzip.decompress(original)[352:]
    path.write_bytes(original)
    corrupt(path, ("truncate", 0.5))
    assert path.read_bytes() == original[: len(original) // 2]
    path.write_bytes(original)
    corrupt(path, ("flip_gz", [(0.5, 1)]))
    assert path.read_bytes() != original and len(path.read_bytes()) == len(original)
    path.write_bytes(original)
    corrupt(path, ("flip_raw", [(0.99, 4)]))
    assert zlib.decompress(path.read_bytes(), 31) != gzip.decompress(original)
