"""Facts about this machine that explain bench_ingest's figures (issue 7); not a target check.

Measured side by side in one run:

  pool start    seconds until a 2-process pool has answered a no-op job, with `fork` (what
                catalog uses when single-threaded) and with a `forkserver` preloading
                catalog.casework (what it used before)
  fresh buffer  seconds to allocate and fill 112 MiB (one 512x512x224 int16 CT) as `bytes` and as
                a numpy array (numpy asks for huge pages), both after a first allocation
  contention    catalog's per-case work (catalog.casework.run_case) over every case of the CT
                benchmark task, in 1 process, then in 2 processes at once that each do all of it:
                how much slower each process gets when two run together (memory bandwidth),
                i.e. the best 2-workers-over-1 speed-up this machine allows

  .venv/bin/python benchmarks/probe_machine.py [--work DIR] [--repeat 2]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cached_benchmark_task, work_dir  # noqa: E402


def _noop(x):
    return x


def pool_start(method: str) -> float:
    """Run in a new (spawned) process, so that no forkserver is running yet."""
    import catalog.casework  # noqa: F401  (the parent has imported it, as `catalog ingest` has)

    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["catalog.casework"])
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(2, mp_context=context) as pool:
        list(pool.map(_noop, [1, 2]))
        seconds = time.perf_counter() - t0
    return seconds


def fresh_buffer(kind: str) -> float:
    import numpy as np

    size = 112 << 20
    make = (lambda: b"\x01" * size) if kind == "bytes" else (lambda: np.ones(size, dtype=np.uint8))
    del_first = make()  # the process's first use of that much memory is not what is measured
    del del_first
    t0 = time.perf_counter()
    block = make()
    seconds = time.perf_counter() - t0
    del block
    return seconds


def _all_cases(task_dir: str) -> float:
    from catalog.casework import CaseJob, run_case
    from catalog.layout import read_layout

    layout = read_layout(task_dir)
    jobs = [CaseJob(layout.root, c, tuple(layout.class_values)) for c in layout.cases]
    run_case(jobs[0])  # warm: first use of memory and code in this process
    t0 = time.perf_counter()
    for job in jobs:
        if run_case(job).failed:
            raise SystemExit(f"{job.case.identifier} failed")
    return time.perf_counter() - t0


def contention(task_dir: str) -> tuple[float, list[float]]:
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        alone = pool.map(_all_cases, [task_dir])[0]
    with context.Pool(2) as pool:
        together = pool.map(_all_cases, [task_dir, task_dir], chunksize=1)
    return alone, together


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="benchmark work dir (the CT task is generated there once)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds; the fastest of each figure is kept")
    args = ap.parse_args(argv)
    task = cached_benchmark_task(work_dir(args.work), "ct", 12)
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = min(value, best.get(name, value))

    for _ in range(args.repeat):
        for method in ("fork", "forkserver"):
            with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as outer:
                keep(f"pool start, {method}", outer.submit(pool_start, method).result())
        with multiprocessing.get_context("fork").Pool(1) as pool:  # each in a new process
            for kind in ("bytes", "numpy"):
                keep(f"fresh 112 MiB buffer, {kind}", pool.apply(fresh_buffer, (kind,)))
        alone, together = contention(str(task))
        keep("CT cases, 1 process alone", alone)
        keep("CT cases, each of 2 processes at once", max(together))
    for name, value in best.items():
        print(f"{name:42s} {value * 1000:9.1f} ms")
    slowdown = best["CT cases, each of 2 processes at once"] / best["CT cases, 1 process alone"]
    print(f"{'2 processes at once: each slower by':42s} {100 * (slowdown - 1):8.1f} %"
          f"   (best possible 2-over-1 speed-up {2 / slowdown:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
