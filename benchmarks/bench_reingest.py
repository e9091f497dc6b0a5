#!/usr/bin/env python3
"""Incremental re-ingest (issue 5): nothing changed, one label changed, one file touched.

On a 100-case task (catalog.synthetic.make_task CT cases, --shape-scale 6 by default: 144-288
slices of 288-480 x 288-480 voxels, int16, about 0.5 s of analysis each; generated once into --work,
which takes about 7 minutes, and hard-linked into a private copy per run), each step in a fresh process, against one fresh SQLite database (or --db URL):

  1. first ingest of all cases                                   T1
  2. re-ingest, nothing changed                                  T2   target: < 2 s and T1 / T2 >= 50
  3. one case's label changed (50 organ voxels relabelled), re-ingest   T3
     then load_properties (the aggregation, with intensity)      T4
                                                                 target: T3 + T4 <= 2 x (c + T4) + T2,
     with c = that case's read + analysis time in the first ingest: "about one case's analysis plus
     the aggregation" (2x slack for a noisy machine), on top of the no-change scan T2
  4. one image touched (new mtime, same bytes), re-ingest        T5   (information: re-hash only)

  python benchmarks/bench_reingest.py                  # 100 cases, 2 workers, SQLite
  python benchmarks/bench_reingest.py --quick          # 20 tiny cases, about a minute
  python benchmarks/bench_reingest.py --db postgresql+psycopg://127.0.0.1:5432/mydb
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import (argument_parser, cached_small_task, code_state, log, run_stage, Table,  # noqa: E402
                     report, task_files, warm_page_cache, work_dir)

NOCHANGE_SECONDS = 2.0
NOCHANGE_SPEEDUP = 50.0
ONE_CASE_SLACK = 2.0


def parse_args(argv=None):
    ap = argument_parser(__doc__, "folder for generated tasks and databases (default: $TMPDIR/catalog-bench)")
    ap.add_argument("--quick", action="store_true", help="20 tiny cases, about a minute")
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--shape-scale", type=float, default=6.0, help="make_task shape_scale (default 6)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--db", help="database URL (default: a fresh SQLite file in --work); 'postgres' = a fresh "
                                 "catalog_bench_<random> database on the local server, dropped afterwards")
    return ap.parse_args(argv)


def private_copy(task: Path, target_base: Path) -> Path:
    """Hard-linked copy of the cached task: files we change are replaced (new inode), never edited."""
    shutil.rmtree(target_base, ignore_errors=True)
    dst = target_base / "nnUNet_raw_data" / task.name
    shutil.copytree(task, dst, copy_function=os.link)
    return dst


def change_label(label_path: Path) -> None:
    """Relabel 50 voxels of class 1 as class 2; written to a new file, then renamed over the old."""
    import numpy as np
    import SimpleITK as sitk

    image = sitk.ReadImage(str(label_path))
    array = sitk.GetArrayFromImage(image)
    where = np.flatnonzero(array == 1)[:50]
    if where.size == 0:
        where = np.flatnonzero(array == 0)[:50]
    array.flat[where] = 2
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    tmp = label_path.with_name(".tmp-" + label_path.name)
    sitk.WriteImage(out, str(tmp), True)
    os.replace(tmp, label_path)


def touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def main(argv=None) -> int:
    args = parse_args(argv)
    work = work_dir(args.work)
    n_cases, scale = (20, 1.0) if args.quick else (args.cases, args.shape_scale)
    started = time.monotonic()
    code_at_start = code_state()  # before anything is measured
    cached = cached_small_task(work, "ct", n_cases=n_cases, shape_scale=scale, task_id=705, seed=args.seed)
    run_dir = work / "run-reingest"
    task = private_copy(cached, run_dir / "raw")
    cases = task_files(task)
    warm_page_cache(f for _, fs in cases for f in fs)
    pg_name = None
    if args.db == "postgres":
        pg_name, url = _common.pg_create_database()
    elif args.db:
        url = args.db
    else:
        db = run_dir / "reingest.db"
        url = f"sqlite:///{db}"
    backend = url.split(":", 1)[0]
    record: dict = {"task": str(task), "cases": len(cases), "shape_scale": scale, "workers": args.workers,
                    "db": backend}
    try:
        def ingest(what: str) -> dict:
            log(f"ingest: {what}")
            res = run_stage("ingest", db=url, task_dir=str(task), workers=args.workers)
            record[what] = res
            return res

        first = ingest("first")
        nochange = ingest("nochange")
        changed_id, changed_files = cases[0]
        # the first ingest's read + analysis time of that case, from the catalog
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        with engine.connect() as conn:
            row = conn.execute(text("SELECT read_seconds, analysis_seconds FROM cases WHERE identifier = :i"),
                               {"i": changed_id}).one()
        engine.dispose()
        case_time = float(row[0]) + float(row[1])
        change_label(changed_files[-1])
        one = ingest("one_changed")
        log("load_properties")
        props = run_stage("properties", db=url, task=task.name)
        record["properties"] = props
        touch(changed_files[0])
        touched = ingest("one_touched")
    finally:
        if pg_name:
            _common.pg_drop_database(pg_name)

    title = "bench_reingest (issue 5): incremental re-ingest"
    if args.quick:
        title += " -- QUICK MODE: tiny cases, the figures say nothing about the targets"
    table = Table(title, code_at_start)
    table.info("task", f"{task.name}: {len(cases)} cases (make_task CT, shape_scale {scale:g}); "
                       f"{args.workers} workers; {backend}")
    table.section("1. first ingest")
    table.info("T1 first ingest", f"{first['seconds']:.2f} s ({first['new']} new; mean case read + analysis "
                                  f"{sum(first['case_seconds']) / max(1, len(first['case_seconds'])):.3f} s)")
    table.section("2. nothing changed")
    table.check("T2 re-ingest, nothing changed", f"{nochange['seconds']:.3f} s ({nochange['unchanged']} unchanged, "
                f"{nochange['new'] + nochange['changed']} analysed)", f"< {NOCHANGE_SECONDS:.0f} s",
                nochange["seconds"] < NOCHANGE_SECONDS and nochange["new"] + nochange["changed"] == 0)
    speedup = first["seconds"] / nochange["seconds"]
    table.check("T1 / T2", f"{speedup:.0f}x", f">= {NOCHANGE_SPEEDUP:.0f}x", speedup >= NOCHANGE_SPEEDUP)
    table.section("3. one label changed")
    table.info("c: that case's read + analysis (first ingest)", f"{case_time:.3f} s ({changed_id})")
    table.info("T3 re-ingest", f"{one['seconds']:.3f} s ({one['changed']} changed, {one['unchanged']} unchanged; "
                               f"db {one['db_seconds']:.3f} s)")
    table.info("T4 load_properties (aggregation, with intensity)", f"{props['seconds']:.3f} s")
    budget = ONE_CASE_SLACK * (case_time + props["seconds"]) + nochange["seconds"]
    table.check("T3 + T4", f"{one['seconds'] + props['seconds']:.3f} s",
                f"<= 2 x (c + T4) + T2 = {budget:.2f} s",
                one["seconds"] + props["seconds"] <= budget and one["changed"] == 1)
    table.section("4. one image touched (same bytes)")
    table.info("T5 re-ingest", f"{touched['seconds']:.3f} s ({touched['unchanged']} unchanged, "
                               f"{touched['new'] + touched['changed']} analysed)")
    status = report(table, record, args, started, work)
    shutil.rmtree(run_dir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
