"""One measured operation in a fresh process: `_stage.py STAGE JSON-PARAMS`.

Prints one line `STAGE-RESULT {json}`. Every stage reports `seconds` (the operation only: no
interpreter start, no imports, no engine creation), `self_maxrss` (this process's peak RSS,
VmHWM, bytes), `children_maxrss` (the largest peak RSS among its worker processes, bytes, or null when it
started none) and `baseline_rss` (RSS just before the operation: interpreter + imports).

Peak RSS of pool workers: fork-context workers (what catalog uses when the process runs no other
thread, see catalog/pool.py) are our children; forkserver-context workers are children of the
forkserver, which reaps them; stopping the forkserver once the pool is gone makes their peak
visible in getrusage(RUSAGE_CHILDREN) here.

Stages:
  floor    {"files": [...], "workers": N}       SimpleITK ReadImage + GetArrayFromImage of every
                                                file once, in a fork pool of N processes
  ingest   {"db": URL, "task_dir": DIR, "workers": N, "force": bool, "profile": FILE|null}
  export   {"db": URL, "task": NAME, "out": DIR, "workers": N, "remove_after": bool}
  properties {"db": URL, "task": NAME}          catalog.properties.load_properties (with intensity)
  touch    {"mib": N}                           allocate and touch N MiB, twice (fresh-memory cost)
  first_case {"task_dir": DIR, "case": ID, "repeats": N}  one case analysed N times (catalog.casework)
  analysis {"task_dir": DIR, "workers": N}      every case analysed as an ingest does, in a pool of
                                                N catalog workers, without the database
  machine  {"rounds": N, "steps": N}            a pure-Python loop in 1 process, then in 2 at once,
                                                N rounds: this machine's own 2-over-1 right now
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time


def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _stop_forkserver() -> None:
    try:
        from multiprocessing import forkserver

        fs = forkserver._forkserver
        if getattr(fs, "_forkserver_pid", None) is not None:
            fs._stop()
    except Exception:  # noqa: BLE001 - only affects the memory and CPU figures
        pass


def _peak_rss_self() -> int:
    """This process's peak RSS, bytes: VmHWM of its own memory. Not getrusage's ru_maxrss, which
    Linux carries over an exec from the process that spawned this one (here the benchmark
    script, which may have held generated volumes)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _maxrss() -> tuple[int, int | None]:
    """(peak RSS of this process, largest peak RSS of its reaped worker processes or None).
    Forked workers start from their RSS at the fork (the pages they share with this process)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return _peak_rss_self(), (children or None)


def _cpu_seconds() -> tuple[float, float, float]:
    """(user + system seconds of this process, the same of its reaped child processes, the system
    seconds of both: page faults, file reads, process start and exit)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime, own.ru_stime + children.ru_stime


def _read_one(path: str) -> tuple[float, int]:
    import SimpleITK as sitk

    t0 = time.perf_counter()
    array = sitk.GetArrayFromImage(sitk.ReadImage(path))
    return time.perf_counter() - t0, int(array.nbytes)


def stage_floor(p: dict) -> dict:
    import concurrent.futures as cf
    import multiprocessing

    import SimpleITK  # noqa: F401  (imported before the fork, as the workers need it)

    files = p["files"]
    baseline = _rss_now()
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(max_workers=p["workers"], mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_read_one, files, chunksize=1))
    seconds = time.perf_counter() - t0
    self_rss, children = _maxrss()
    return {"seconds": seconds, "per_file_seconds": [r[0] for r in results],
            "decoded_bytes": sum(r[1] for r in results), "baseline_rss": baseline,
            "self_maxrss": self_rss, "children_maxrss": children}


def stage_ingest(p: dict) -> dict:
    from catalog.db import make_engine
    from catalog.ingest import ingest_task

    t0 = time.perf_counter()
    engine = make_engine(p["db"])
    engine_seconds = time.perf_counter() - t0
    baseline = _rss_now()
    profiler = None
    if p.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    self_cpu0, workers_cpu0, system0 = _cpu_seconds()
    t0 = time.perf_counter()
    summary = ingest_task(engine, p["task_dir"], workers=p["workers"], force=p.get("force", False))
    seconds = time.perf_counter() - t0
    self_cpu = _cpu_seconds()[0] - self_cpu0
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(p["profile"])
    engine.dispose()
    _stop_forkserver()
    # forked workers are reaped when the pool ends; a forkserver's, with the forkserver just now
    _, workers_cpu, system = _cpu_seconds()
    workers_cpu, system = workers_cpu - workers_cpu0, system - system0
    self_rss, children = _maxrss()
    return {"seconds": seconds, "summary_seconds": summary.seconds, "engine_seconds": engine_seconds,
            "case_seconds": list(summary.case_seconds), "read_seconds": list(summary.read_seconds),
            "db_seconds": summary.db_seconds, "new": summary.new, "changed": summary.changed,
            "unchanged": summary.unchanged, "failed": summary.failed, "removed": summary.removed,
            "elsewhere": summary.elsewhere, "errors": summary.errors,
            "findings": [f"{f.check}: {f.message}" for f in summary.findings if f.severity == "error"][:5],
            "baseline_rss": baseline, "self_maxrss": self_rss, "children_maxrss": children,
            "self_cpu_seconds": self_cpu, "workers_cpu_seconds": workers_cpu, "system_cpu_seconds": system,
            "pid": os.getpid()}


def stage_export(p: dict) -> dict:
    import shutil
    from pathlib import Path

    from catalog.db import make_engine
    from catalog.export.nnunet_v1 import export_nnunet_v1

    engine = make_engine(p["db"])
    baseline = _rss_now()
    t0 = time.perf_counter()
    export_nnunet_v1(engine, p["task"], p["out"], workers=p["workers"], overwrite=True)
    seconds = time.perf_counter() - t0
    engine.dispose()
    npz_bytes = sum(f.stat().st_size for f in Path(p["out"]).glob("*.npz"))
    if p.get("remove_after"):
        shutil.rmtree(p["out"], ignore_errors=True)
    _stop_forkserver()
    self_rss, children = _maxrss()
    return {"seconds": seconds, "npz_bytes": npz_bytes, "baseline_rss": baseline, "self_maxrss": self_rss,
            "children_maxrss": children}


def stage_properties(p: dict) -> dict:
    from catalog.db import make_engine
    from catalog.properties import load_properties

    engine = make_engine(p["db"])
    t0 = time.perf_counter()
    props = load_properties(engine, p["task"], intensity=True)
    seconds = time.perf_counter() - t0
    engine.dispose()
    self_rss, children = _maxrss()
    return {"seconds": seconds, "cases": len(props.cases), "self_maxrss": self_rss, "children_maxrss": children}


def stage_touch(p: dict) -> dict:
    """Seconds to allocate and first touch `mib` MiB twice in this new process: the first time
    the memory is new to the process, the second time it reuses what the first freed."""
    import numpy as np

    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        block = np.ones(p["mib"] << 20, dtype=np.uint8)
        times.append(time.perf_counter() - t0)
        del block
    return {"seconds": times, "mib": p["mib"]}


def stage_first_case(p: dict) -> dict:
    """One case checked and analysed `repeats` times in this new process (catalog.casework, as a
    worker does): the first run also pays for memory the process has never used."""
    from catalog.casework import CaseJob, run_case
    from catalog.layout import read_layout
    from catalog.memory import freed_memory_kept

    layout = read_layout(p["task_dir"])
    case = next(c for c in layout.cases if c.identifier == p["case"])
    job = CaseJob(layout.root, case, tuple(layout.class_values))
    times = []
    with freed_memory_kept():  # as in a pool worker: later runs reuse the first run's memory
        for _ in range(p["repeats"]):
            t0 = time.perf_counter()
            outcome = run_case(job)
            times.append(time.perf_counter() - t0)
            if outcome.failed:
                raise SystemExit(f"{case.identifier}: {outcome.findings}")
    return {"seconds": times}


def _loops_at_once(steps: int, cpus: list[int]) -> float:
    """Seconds until a pure-Python loop of `steps` steps has finished in a forked process per CPU
    of `cpus`, each pinned to its CPU, all started together."""
    pids = []
    t0 = time.perf_counter()
    for cpu in cpus:
        pid = os.fork()
        if pid == 0:
            try:
                if hasattr(os, "sched_setaffinity"):  # Linux; elsewhere the OS places them
                    os.sched_setaffinity(0, {cpu})
                x = 0
                for i in range(steps):
                    x += i * i
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return time.perf_counter() - t0


def stage_machine(p: dict) -> dict:
    """What this machine gives two processes right now, with no memory traffic and no catalog code:
    `rounds` times, a pure-Python loop of `steps` steps in one process alone, then in two at once,
    pinned to the first two CPUs. Each round's ratio is twice the one process's seconds over the
    two's: 2.0 when two busy vCPUs run as fast as one, about 1.1 as if the host ran them as one
    core's two hardware threads (measured on these VMs, and changing within seconds)."""
    cpus = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else [0, 1]
    ratios = []
    for r in range(p["rounds"]):
        alone = _loops_at_once(p["steps"], [cpus[r % len(cpus)]])
        ratios.append(2 * alone / _loops_at_once(p["steps"], cpus))
    return {"ratios": ratios}


def stage_analysis(p: dict) -> dict:
    """Every case checked and analysed (catalog.casework.run_case, as in an ingest) in a fork pool
    of N catalog worker processes (catalog.pool.process_pool; N=1: in this process), largest case
    first as an ingest plans them, with no database and no claims: what two processes of this
    machine give for the analysis alone, side by side with the ingest."""
    from catalog.casework import CaseJob, run_case
    from catalog.layout import read_layout
    from catalog.memory import freed_memory_kept
    from catalog.pool import process_pool

    layout = read_layout(p["task_dir"])
    root = layout.root

    def input_bytes(case) -> int:
        return sum(os.path.getsize(f"{root}/{rel}") for rel in (*case.images, case.label))

    jobs = [CaseJob(root, case, tuple(layout.class_values))
            for case in sorted(layout.cases, key=input_bytes, reverse=True)]
    baseline = _rss_now()
    t0 = time.perf_counter()
    if p["workers"] == 1:
        with freed_memory_kept():
            outcomes = [run_case(job) for job in jobs]
    else:
        with process_pool(p["workers"]) as pool:
            outcomes = list(pool.map(run_case, jobs))
    seconds = time.perf_counter() - t0
    failed = [o.identifier for o in outcomes if o.failed]
    if failed:
        raise SystemExit(f"analysis failed for {failed}")
    self_rss, children = _maxrss()
    return {"seconds": seconds, "baseline_rss": baseline, "self_maxrss": self_rss, "children_maxrss": children}


def main() -> int:
    stage, params = sys.argv[1], json.loads(sys.argv[2])
    result = {"floor": stage_floor, "ingest": stage_ingest, "export": stage_export,
              "properties": stage_properties, "touch": stage_touch, "first_case": stage_first_case,
              "analysis": stage_analysis, "machine": stage_machine}[stage](params)
    print("STAGE-RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
