"""Parity harness: run the real nnU-Net v1 in its side env and compare its output with catalog's.

Everything here runs in the main (catalog) environment and talks to the side env
(``side_env.ensure_side_env()``: numpy 1.26 + nnunet 1.7.1, no torch) only through subprocesses
with a clean environment (no PYTHONPATH / VIRTUAL_ENV / nnUNet_* leaking in), so numpy 1 and
numpy 2 never meet in one interpreter.

Typical test::

    from catalog.synthetic import make_task
    import harness

    raw_base = tmp_path / "base"
    task_dir = make_task(raw_base / "nnUNet_raw_data", kind="ct", task_id=501, seed=0)
    v1_dir = harness.run_v1(raw_base, task_dir.name)          # raw_base/nnUNet_cropped_data/<task>
    ...  # catalog ingest task_dir; catalog export nnunet-v1 <task> --out ours
    harness.assert_identical(v1_dir, ours)                     # or: diffs = harness.compare_folders(...)

Both sides read the raw task from the same absolute path, so the paths stored in the per-case pkl
files (``list_of_data_files``, ``seg_file``) are compared verbatim. Give catalog the same spelling
of the path (``run_v1`` uses ``os.path.abspath(raw_base)``, no symlink resolution).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import side_env  # noqa: E402
RUN_V1 = HERE / "run_v1.py"
RUN_PLANNERS = HERE / "run_planners.py"
COMPARE = HERE / "compare.py"

DEFAULT_PROCESSES = 2


class HarnessError(RuntimeError):
    """A side-env script failed (its output is in the message)."""


def side_python() -> Path:
    """The side env's python (built on first use, cached across sessions; see side_env.py)."""
    return side_env.ensure_side_env()


def _run_side(args: list[str], what: str, *, timeout: float, ok_codes=(0,)) -> subprocess.CompletedProcess:
    cmd = [str(side_python())] + [str(a) for a in args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                          env=side_env.clean_env(), stdin=subprocess.DEVNULL, cwd=str(HERE))
    if proc.returncode not in ok_codes:
        raise HarnessError("%s failed (exit %d)\ncommand: %s\n---- stdout (tail) ----\n%s\n---- stderr (tail) ----\n%s"
                           % (what, proc.returncode, " ".join(cmd), proc.stdout[-6000:], proc.stderr[-6000:]))
    return proc


def run_v1(raw_base, task_name: str, intensity: str = "always", processes: int = DEFAULT_PROCESSES,
           timeout: float = 1800) -> Path:
    """Run real v1 crop + DatasetAnalyzer (+ props_per_case.pkl) on raw_base/nnUNet_raw_data/task_name.

    intensity: "always" (collect intensity properties for every task) or "cli" (v1 CLI rule: only if
    a modality is exactly "CT"/"ct"). Returns raw_base/nnUNet_cropped_data/task_name (replaced if it
    existed). Run info (versions, per-stage seconds) is at raw_base/run_v1-<task_name>.json."""
    if intensity not in ("always", "cli"):
        raise ValueError("intensity must be 'always' or 'cli', not %r" % intensity)
    raw_base = Path(os.path.abspath(raw_base))
    info = raw_base / ("run_v1-%s.json" % task_name)
    _run_side([RUN_V1, raw_base, task_name, "--intensity", intensity, "--processes", processes, "--info", info],
              "run_v1.py %s" % task_name, timeout=timeout)
    return raw_base / "nnUNet_cropped_data" / task_name


def run_v1_info(raw_base, task_name: str) -> dict:
    """What run_v1 recorded: versions, options, case ids, per-stage seconds."""
    return json.loads((Path(os.path.abspath(raw_base)) / ("run_v1-%s.json" % task_name)).read_text())


def compare_folders_report(v1_dir, our_dir, path_map: tuple[str, str] | None = None,
                           timeout: float = 900) -> dict:
    """compare.py --json on two cropped folders: {"identical", "differences", "notes", "numpy"}."""
    args = [COMPARE, os.path.abspath(v1_dir), os.path.abspath(our_dir), "--json"]
    if path_map:
        args += ["--map-path", "%s=%s" % path_map]
    proc = _run_side(args, "compare.py", timeout=timeout, ok_codes=(0, 1))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_folders(v1_dir, our_dir, path_map: tuple[str, str] | None = None) -> list[str]:
    """Differences between v1's cropped folder and ours ([] = identical), compared in the side env."""
    return compare_folders_report(v1_dir, our_dir, path_map)["differences"]


def assert_identical(v1_dir, our_dir) -> None:
    diffs = compare_folders(v1_dir, our_dir)
    assert not diffs, "%d differences between v1 (%s) and ours (%s):\n%s" % (
        len(diffs), v1_dir, our_dir, "\n".join(diffs[:200]))


def run_planners(cropped_dir, out, task_name: str | None = None, planners: str = "3d,2d",
                 timeout: float = 900) -> dict:
    """Run the real ExperimentPlanner3D_v21 / 2D_v21 plan_experiment() on a copy of cropped_dir.

    Returns the JSON summary; summary["plans"]["3d"|"2d"]["plans_file"] is the plans pkl.
    task_name names the copy (default: cropped_dir's basename); use the same for both sides so the
    plans' paths compare equal."""
    out = Path(os.path.abspath(out))
    args = [RUN_PLANNERS, os.path.abspath(cropped_dir), out, "--planners", planners]
    if task_name:
        args += ["--task", task_name]
    _run_side(args, "run_planners.py", timeout=timeout)
    return json.loads((out / "planners.json").read_text())


def compare_plans_report(plans_a, plans_b, timeout: float = 300) -> dict:
    proc = _run_side([COMPARE, "--plans", os.path.abspath(plans_a), os.path.abspath(plans_b), "--json"],
                     "compare.py --plans", timeout=timeout, ok_codes=(0, 1))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_plans(plans_a, plans_b) -> list[str]:
    """Differences between two plans pkls ([] = identical); every key, dataset_properties included."""
    return compare_plans_report(plans_a, plans_b)["differences"]


def plan_both(v1_dir, our_dir, task_name: str, workdir=None) -> dict[str, list[str]]:
    """Run both planners on both folders; {"3d": differences, "2d": differences}.
    The planners' copies go to workdir (kept) or to a temporary folder (removed)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="catalog-plans-") as tmp:
            return plan_both(v1_dir, our_dir, task_name, tmp)
    workdir = Path(workdir)
    a = run_planners(v1_dir, workdir / "v1", task_name)
    b = run_planners(our_dir, workdir / "ours", task_name)
    return {k: compare_plans(a["plans"][k]["plans_file"], b["plans"][k]["plans_file"]) for k in a["plans"]}
