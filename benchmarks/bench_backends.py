#!/usr/bin/env python3
"""Ingest throughput on SQLite and PostgreSQL, and the database's share of the time per case (issue 3).

On CT-sized cases (the benchmark CT task, default 6 cases of 512x512x100-250 int16, generated once
into --work), for each process count N (default 1, then 2) and each backend, side by side in one
run, --repeat rounds (default 3) that interleave all configurations, the fastest kept (the
machine's speed drifts), each ingest in a
fresh process into a fresh database (SQLite: a new file; PostgreSQL: a new
database `catalog_bench_<random>` on the server, dropped afterwards):

  throughput    cases per minute and MiB of raw voxels per second (wall time of ingest_task)
  db share      summary.db_seconds (claims, stores incl. the intensity samples, lease renewals)
                / summed per-case time (read + analysis, summary.case_seconds)     target < 10%
                also shown: db_seconds / (wall x N), the share of the run's worker capacity

  python benchmarks/bench_backends.py                  # 6 CT cases, 1 and 2 workers, both backends
  python benchmarks/bench_backends.py --quick          # tiny task, about a minute
  python benchmarks/bench_backends.py --cases 6 --pg postgresql://user@host:5432/postgres

The PostgreSQL server is given by --pg (an admin URL of a database from which new databases can be
created; default $CATALOG_BENCH_PG, else $CATALOG_TEST_PG, else postgresql://127.0.0.1:5432/postgres).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import (argument_parser, cached_benchmark_task, cached_small_task, code_state, log,  # noqa: E402
                     mib, raw_voxel_bytes, report, run_stage, Table, task_files, warm_page_cache, work_dir)

DB_SHARE_TARGET = 0.10


def parse_args(argv=None):
    ap = argument_parser(__doc__, "folder for generated tasks and databases (default: $TMPDIR/catalog-bench)")
    ap.add_argument("--quick", action="store_true", help="tiny task (make_task), about a minute")
    ap.add_argument("--cases", type=int, default=6, help="CT benchmark cases (default 6)")
    ap.add_argument("--workers", default="1,2", help="process counts, comma separated (default 1,2)")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--pg", help="PostgreSQL admin URL (see above)")
    ap.add_argument("--repeat", type=int, help="repeat each ingest, keep the fastest (default 3; 1 with --quick)")
    return ap.parse_args(argv)


def stored_counts(url: str) -> dict:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            q = lambda sql: conn.execute(text(sql)).scalar() or 0  # noqa: E731
            return {"samples": int(q("SELECT SUM(sample_count) FROM case_channels")),
                    "sample_bytes": int(q("SELECT SUM(LENGTH(samples)) FROM case_channels")),
                    "regions": int(q("SELECT COUNT(*) FROM case_regions")),
                    "cases_ok": int(q("SELECT COUNT(*) FROM cases WHERE status = 'ok'"))}
    finally:
        engine.dispose()


def ingest_once(backend: str, task: Path, n: int, run_dir: Path) -> dict:
    name = None
    if backend == "sqlite":
        db = run_dir / f"backends-w{n}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        url = f"sqlite:///{db}"
    else:
        name, url = _common.pg_create_database()
    try:
        result = run_stage("ingest", db=url, task_dir=str(task), workers=n)
        if result["errors"] or result["failed"]:
            raise SystemExit(f"ingest reported errors: {result['findings']}")
        result["stored"] = stored_counts(url)
        return result
    finally:
        if name:
            _common.pg_drop_database(name)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pg:
        _common.PG_ADMIN_URL = args.pg
    work = work_dir(args.work)
    run_dir = work / "run-backends"
    run_dir.mkdir(exist_ok=True)
    workers = [int(x) for x in args.workers.split(",") if x.strip()]
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    started = time.monotonic()
    code_at_start = code_state()  # before anything is measured
    if args.quick:
        task = cached_small_task(work, "ct", n_cases=4, shape_scale=1.0, task_id=701, seed=args.seed)
    else:
        task = cached_benchmark_task(work, "ct", args.cases, args.seed)
    cases = task_files(task)
    files = [f for _, fs in cases for f in fs]
    raw_total = sum(raw_voxel_bytes(fs) for _, fs in cases)
    in_bytes = warm_page_cache(files)

    title = "bench_backends (issue 3): ingest throughput and database share per backend"
    if args.quick:
        title += " -- QUICK MODE: tiny task, the figures say nothing about the targets"
    table = Table(title, code_at_start)
    table.info("task", f"{task.name}: {len(cases)} cases, {mib(in_bytes)} .nii.gz, {mib(raw_total)} raw voxels")
    record: dict = {"task": str(task), "cases": len(cases), "raw_bytes": raw_total, "runs": {}}
    results: dict = {}
    rounds: dict = {}
    for r in range(args.repeat):  # rounds interleave every configuration: the machine's speed drifts
        for n in workers:
            for backend in backends:
                log(f"{backend}: ingest with {n} worker(s) (round {r + 1})")
                res = ingest_once(backend, task, n, run_dir)
                rounds.setdefault((backend, n), []).append(res["seconds"])
                if (backend, n) not in results or res["seconds"] < results[(backend, n)]["seconds"]:
                    results[(backend, n)] = res
                    record["runs"][f"{backend}-w{n}"] = res

    for backend in backends:
        for n in workers:
            res = results[(backend, n)]
            stored = res["stored"]
            case_sum = sum(res["case_seconds"])
            table.section(f"{backend}, {n} worker{'s' if n > 1 else ''}")
            table.info("ingest wall time (fastest round)", f"{res['seconds']:.2f} s for {len(res['case_seconds'])} cases "
                       f"(rounds {', '.join(f'{x:.1f}' for x in rounds[(backend, n)])})")
            table.info("throughput", f"{60 * len(cases) / res['seconds']:.1f} cases/min, "
                                     f"{raw_total / 2**20 / res['seconds']:.0f} MiB raw voxels/s")
            table.info("per-case time (read + analysis), summed", f"{case_sum:.2f} s "
                       f"(mean {case_sum / max(1, len(res['case_seconds'])):.2f} s)")
            table.info("database time (claim + store + renew)", f"{res['db_seconds']:.3f} s "
                       f"(mean {res['db_seconds'] / max(1, len(cases)) * 1000:.0f} ms per case)")
            table.info("stored", f"{stored['samples']:,} intensity samples ({mib(stored['sample_bytes'])}), "
                                 f"{stored['regions']:,} region rows")
            share = res["db_seconds"] / case_sum if case_sum else float("nan")
            table.check("db share of the per-case time", f"{share:.1%}", f"< {DB_SHARE_TARGET:.0%}",
                        share < DB_SHARE_TARGET)
            table.info("    db time / (wall x workers)", f"{res['db_seconds'] / (res['seconds'] * n):.1%}")
        if 1 in workers and 2 in workers:
            table.info(f"{backend}: speed-up 2 workers over 1",
                       f"{results[(backend, 1)]['seconds'] / results[(backend, 2)]['seconds']:.2f}x")
    if "sqlite" in backends and "postgres" in backends:
        table.section("PostgreSQL vs SQLite")
        for n in workers:
            table.info(f"wall time ratio postgres / sqlite, {n} worker(s)",
                       f"{results[('postgres', n)]['seconds'] / results[('sqlite', n)]['seconds']:.2f}x")
    return report(table, record, args, started, work)


if __name__ == "__main__":
    sys.exit(main())
