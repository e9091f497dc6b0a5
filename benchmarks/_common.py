"""Shared helpers of the benchmark scripts (not a benchmark itself).

* ``work_dir``: the folder for generated tasks, databases and outputs (``--work DIR``; default a
  fixed folder under the system temp dir, so generated tasks are reused between runs).
* ``cached_benchmark_task`` / ``cached_small_task``: generate a synthetic task once and reuse it;
  a task of n cases is hard-linked from a cached larger one of the same kind and seed when
  there is one (generation is deterministic per case index).
* ``run_stage``: run one measured operation in a fresh Python process (``_stage.py``) and return
  its JSON result, so that every measurement starts from the same state and its peak memory
  (own and of its worker processes) can be read with ``getrusage``.
* ``Table``: the result table with PASS/FAIL per target.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STAGE = HERE / "_stage.py"
PG_ADMIN_URL = os.environ.get("CATALOG_BENCH_PG", os.environ.get("CATALOG_TEST_PG",
                                                                  "postgresql://127.0.0.1:5432/postgres"))


def argument_parser(doc: str, work_help: str) -> argparse.ArgumentParser:
    """The options every benchmark script has (--work, --seed, --json, --fail-on-target); the
    script adds its own."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    ap.add_argument("--work", help=work_help)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write every measurement to this JSON file")
    ap.add_argument("--fail-on-target", action="store_true", help="exit 1 when a target is missed")
    return ap


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def work_dir(arg: str | None) -> Path:
    path = Path(arg) if arg else Path(tempfile.gettempdir()) / "catalog-bench"
    path = Path(os.path.abspath(path))
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- generated tasks ----------------------------------------------------------------------------

def _task_in(raw_base: Path) -> Path:
    return next(p for p in (raw_base / "nnUNet_raw_data").iterdir() if p.is_dir())


def _derive_subset(source_base: Path, target_base: Path, n_cases: int) -> Path:
    """Hard-link the first n cases (by generation index) of a cached bigger task."""
    src = _task_in(source_base)
    dj = json.loads((src / "dataset.json").read_text())
    prefix = "bct_" if "CT" in src.name else "bmr_"
    keep = {f"{prefix}{i}" if prefix == "bct_" else f"{prefix}{i:03d}" for i in range(n_cases)}
    dst = target_base / "nnUNet_raw_data" / src.name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for entry in dj["training"]:
        cid = os.path.basename(entry["image"])[:-len(".nii.gz")]
        if cid not in keep:
            continue
        training.append(entry)
        for f in (src / "imagesTr").glob(f"{cid}_*.nii.gz"):
            os.link(f, dst / "imagesTr" / f.name)
        os.link(src / "labelsTr" / f"{cid}.nii.gz", dst / "labelsTr" / f"{cid}.nii.gz")
    dj["training"], dj["numTraining"] = training, len(training)
    (dst / "dataset.json").write_text(json.dumps(dj, indent=4) + "\n")
    return dst


def cached_benchmark_task(work: Path, kind: str, n_cases: int, seed: int = 0) -> Path:
    """WORK/tasks/bench-<kind>-n<N>-seed<S>/nnUNet_raw_data/Task60x_Bench<KIND>/ (made once)."""
    from catalog.synthetic import make_benchmark_task

    base = work / "tasks" / f"bench-{kind}-n{n_cases}-seed{seed}"
    if (base / "COMPLETE").exists():
        return _task_in(base)
    shutil.rmtree(base, ignore_errors=True)
    bigger = sorted((p for p in (work / "tasks").glob(f"bench-{kind}-n*-seed{seed}") if (p / "COMPLETE").exists()
                     and int(p.name.split("-n")[1].split("-")[0]) > n_cases),
                    key=lambda p: int(p.name.split("-n")[1].split("-")[0])) if (work / "tasks").exists() else []
    t0 = time.monotonic()
    if bigger:
        log(f"deriving the {n_cases}-case {kind.upper()} task from {bigger[0].name} (hard links)")
        task = _derive_subset(bigger[0], base, n_cases)
    else:
        log(f"generating the {n_cases}-case {kind.upper()} benchmark task under {base} "
            f"(once; reused by later runs with the same --work)")
        task = make_benchmark_task(base / "nnUNet_raw_data", kind, task_id=601 if kind == "ct" else 602,
                                   n_cases=n_cases, seed=seed)
    (base / "COMPLETE").write_text(f"{time.monotonic() - t0:.1f}\n")
    log(f"task ready: {task} ({time.monotonic() - t0:.0f} s)")
    return task


def cached_small_task(work: Path, kind: str, n_cases: int, shape_scale: float, task_id: int,
                      seed: int = 0) -> Path:
    """A make_task() task, cached like cached_benchmark_task."""
    from catalog.synthetic import make_task

    base = work / "tasks" / f"small-{kind}-n{n_cases}-x{shape_scale:g}-seed{seed}-id{task_id}"
    if (base / "COMPLETE").exists():
        return _task_in(base)
    shutil.rmtree(base, ignore_errors=True)
    t0 = time.monotonic()
    log(f"generating a {n_cases}-case {kind.upper()} task (shape_scale {shape_scale:g}) under {base}")
    task = make_task(base / "nnUNet_raw_data", kind, task_id=task_id, n_cases=n_cases, seed=seed,
                     shape_scale=shape_scale)
    (base / "COMPLETE").write_text(f"{time.monotonic() - t0:.1f}\n")
    log(f"task ready: {task} ({time.monotonic() - t0:.0f} s)")
    return task


def task_files(task: Path) -> list[tuple[str, list[Path]]]:
    """[(case id, [image channel files..., label file])] in dataset.json order."""
    dj = json.loads((task / "dataset.json").read_text())
    n_channels = len(dj["modality"])
    cases = []
    for entry in dj["training"]:
        cid = os.path.basename(entry["image"])[:-len(".nii.gz")]
        files = [task / "imagesTr" / f"{cid}_{c:04d}.nii.gz" for c in range(n_channels)]
        files.append(task / "labelsTr" / os.path.basename(entry["label"]))
        cases.append((cid, files))
    return cases


def raw_voxel_bytes(files: list[Path]) -> int:
    """Voxels x bytes per voxel of the stored pixel type, summed over the files (header only)."""
    import SimpleITK as sitk

    total = 0
    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        reader.ReadImageInformation()
        n = 1
        for s in reader.GetSize():
            n *= s
        probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
        total += n * reader.GetNumberOfComponents() * sitk.GetArrayViewFromImage(probe).dtype.itemsize
    return total


def warm_page_cache(paths) -> float:
    """Read every file once so all timed stages find them in the page cache. Returns bytes read."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in Path(path).rglob(pattern) if p.is_file())


# ---- measured stages in fresh processes ---------------------------------------------------------

class StageError(RuntimeError):
    pass


def run_stage(stage: str, **params) -> dict:
    """Run `_stage.py STAGE JSON` with the main venv's python; return its JSON result."""
    cmd = [sys.executable, str(STAGE), stage, json.dumps(params)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise StageError(f"stage {stage} failed (exit {proc.returncode}):\n{proc.stderr[-5000:]}")
    lines = [l for l in proc.stdout.splitlines() if l.startswith("STAGE-RESULT ")]
    if not lines:
        raise StageError(f"stage {stage} printed no result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("STAGE-RESULT "):])


def side_python() -> Path:
    sys.path.insert(0, str(REPO / "tests" / "parity"))
    from side_env import ensure_side_env  # noqa: PLC0415

    return ensure_side_env()


def run_v1(raw_base: Path, task_name: str, processes: int, out_json: Path) -> dict:
    """nnU-Net v1 crop + DatasetAnalyzer (tests/parity/run_v1.py, real nnunet==1.7.1 in the side
    env) through benchmarks/_v1_timed.py, which also times every np.savez_compressed and
    SimpleITK.ReadImage call. Returns {"wall": s, "seconds": {stage: s}, "calls": {fn: (n, s summed)},
    "self_maxrss" / "children_maxrss": bytes, "npz_bytes": bytes}."""
    sys.path.insert(0, str(REPO / "tests" / "parity"))
    from side_env import clean_env  # noqa: PLC0415

    py = side_python()
    calls_file = out_json.with_suffix(".calls.jsonl")
    for f in (out_json, calls_file):
        f.unlink(missing_ok=True)
    env = clean_env({"CATALOG_BENCH_V1_CALLS": str(calls_file)})
    cmd = [str(py), str(HERE / "_v1_timed.py"), str(raw_base), task_name, "--intensity", "always",
           "--processes", str(processes), "--info", str(out_json)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise StageError(f"nnU-Net v1 run failed (exit {proc.returncode}):\n{proc.stdout[-5000:]}")
    info = json.loads(out_json.read_text())
    calls: dict[str, list[float]] = {}
    maxrss: dict[str, int] = {}
    if calls_file.exists():
        for line in calls_file.read_text().splitlines():
            rec = json.loads(line)
            if rec["fn"].startswith("maxrss_"):
                maxrss[rec["fn"][len("maxrss_"):]] = int(rec["s"])
            else:
                calls.setdefault(rec["fn"], []).append(rec["s"])
    cropped = raw_base / "nnUNet_cropped_data" / task_name
    npz_bytes = dir_bytes(cropped, "*.npz") if cropped.exists() else 0
    shutil.rmtree(raw_base / "nnUNet_cropped_data", ignore_errors=True)
    return {"wall": wall, "seconds": info["seconds"], "calls": {k: (len(v), sum(v)) for k, v in calls.items()},
            "self_maxrss": maxrss.get("self"), "children_maxrss": maxrss.get("children"), "npz_bytes": npz_bytes}


# ---- postgres -------------------------------------------------------------------------------------

def pg_create_database(prefix: str = "catalog_bench_") -> tuple[str, str]:
    """Create a fresh database; return (its name, its SQLAlchemy URL)."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    name = prefix + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    return name, url.render_as_string(hide_password=False)


def pg_drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- output -----------------------------------------------------------------------------------------

def code_state() -> str:
    """Which catalog code was measured: git commit, and the catalog/ files changed since (read-only
    git calls; --no-optional-locks so that not even the index's stat cache is written)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, timeout=20).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD").strip()
    digest = source_digest()
    if not head:
        return f"source digest {digest} (not a git checkout)"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "catalog", "migrations").splitlines()]
    return (f"git {head}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else " (clean)")
            + f"; source digest {digest}")


def source_digest() -> str:
    """sha256 (12 hex digits) over catalog/ and migrations/ *.py: tells whether the code changed
    while a benchmark ran."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted([*(REPO / "catalog").rglob("*.py"), *(REPO / "migrations").rglob("*.py")]):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def mib(nbytes: float | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:,.0f} MiB"


def report(table: "Table", record: dict, args, started: float, work: Path) -> int:
    """Print the table and the run's duration, write --json; returns the exit status (1 for a missed
    target with --fail-on-target)."""
    print()
    print(table.render())
    print(f"(total benchmark time {time.monotonic() - started:.0f} s; work dir {work})")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=str))
    return 1 if args.fail_on_target and table.failed else 0


class Table:
    """Rows of (what, value, target, verdict); verdict is PASS / FAIL / '' (information only).

    Create it when the run starts: it notes the code's state then, and render() warns when the
    catalog code changed while the benchmark ran (its figures would mix two versions)."""

    def __init__(self, title: str, code_at_start: str | None = None):
        self.title = title
        self.code_at_start = code_at_start or code_state()
        self.rows: list[tuple[str, str, str, str]] = []
        self._section = ""
        self.failed: list[str] = []  # "section: measure" of every missed target

    def info(self, what: str, value: str) -> None:
        self.rows.append((what, value, "", ""))

    def check(self, what: str, value: str, target: str, ok: bool | None) -> None:
        self.rows.append((what, value, target, "n/a" if ok is None else ("PASS" if ok else "FAIL")))
        if ok is False:
            self.failed.append(f"{self._section.split(':')[0]}: {what.strip()}" if self._section else what.strip())

    def section(self, title: str) -> None:
        self._section = title
        self.rows.append((f"-- {title}", "", "", ""))

    def render(self) -> str:
        heads = ("measure", "value", "target", "result")
        body = [r for r in self.rows if not (r[0].startswith("-- ") and not any(r[1:]))]
        widths = [max([len(heads[i])] + [len(r[i]) for r in body]) for i in range(4)]
        line = "+".join("-" * (w + 2) for w in widths)
        out = [f"== {self.title} ==", line,
               " | ".join(h.ljust(w) for h, w in zip(heads, widths)), line]
        for r in self.rows:
            if r[0].startswith("-- ") and not any(r[1:]):
                out.append(r[0])
                continue
            out.append(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
        out.append(line)
        code_now = code_state()
        if code_now == self.code_at_start:
            out.append(f"catalog code measured: {code_now}")
        else:
            out.append(f"WARNING: the catalog code changed during this run, the figures mix versions:\n"
                       f"  at start: {self.code_at_start}\n  at end:   {code_now}")
        checks = [r for r in self.rows if r[3] in ("PASS", "FAIL")]
        out.append(f"targets: {sum(r[3] == 'PASS' for r in checks)} of {len(checks)} met")
        out.extend(f"  FAILED: {name}" for name in self.failed)
        return "\n".join(out)
