"""tests/parity/run_v1.py (real nnU-Net v1 crop + DatasetAnalyzer), with a stopwatch on two calls.

SIDE ENV ONLY (see tests/parity/side_env.py). Same arguments as run_v1.py. Before nnU-Net runs,
``numpy.savez_compressed`` and ``SimpleITK.ReadImage`` are wrapped so that every call (in the main
process and in the fork-started pool workers, which inherit the wrappers) appends
``{"fn": name, "s": seconds, "pid": pid}`` to the file named by $CATALOG_BENCH_V1_CALLS; at the
end the peak RSS of the main process and of its pool workers is appended the same way
(``fn`` = ``maxrss_self`` / ``maxrss_children``, ``s`` = bytes).
v1's cropping calls both through their module attributes (``np.savez_compressed``,
``sitk.ReadImage``), so the wrappers see every call; nothing else changes.
"""
import functools
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "parity"))


def _wrap(module, name, label, calls_file):
    original = getattr(module, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            record = json.dumps({"fn": label, "s": time.perf_counter() - t0, "pid": os.getpid()}) + "\n"
            fd = os.open(calls_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, record.encode())
            finally:
                os.close(fd)

    setattr(module, name, timed)


def main():
    calls_file = os.environ.get("CATALOG_BENCH_V1_CALLS")
    if calls_file:
        import numpy
        import SimpleITK

        _wrap(numpy, "savez_compressed", "np.savez_compressed", calls_file)
        _wrap(SimpleITK, "ReadImage", "sitk.ReadImage", calls_file)
    import run_v1

    code = run_v1.main(sys.argv[1:])
    if calls_file:  # peak RSS of this process and of its (reaped) pool workers, bytes
        import resource

        with open("/proc/self/status") as status:  # VmHWM: ru_maxrss would include the spawner's
            self_peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
        children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        with open(calls_file, "a") as f:
            for label, value in (("maxrss_self", self_peak), ("maxrss_children", children_peak)):
                f.write(json.dumps({"fn": label, "s": value, "pid": os.getpid()}) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
