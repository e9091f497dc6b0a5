"""Build (once) and locate the side virtualenv that runs the real nnU-Net v1 for the parity tests.

The real nnU-Net v1 (``nnunet==1.7.1``) needs numpy 1.x, while catalog itself may run on numpy 2,
so the reference runs in a separate interpreter: a virtualenv built from
``requirements-nnunet-v1.txt`` (beside this file), without PyTorch.

Where it lives:
    ``$CATALOG_NNUNET_V1_VENV`` if set, else
    ``~/.cache/catalog/nnunet-v1-<first 12 hex digits of sha256(requirements file)>``.
Editing the requirements file therefore selects a fresh cache directory.

How it is built: ``python -m venv`` into a temporary sibling directory, ``pip install -r`` of the
pinned packages, ``pip install --no-deps`` of the ``#no-deps`` lines (nnunet, batchgenerators),
a check (numpy 1.x, no torch, ``import nnunet`` and the crop / analyzer / planner modules with
the shims of ``v1_shims.py``), then one ``os.rename`` into place. An ``fcntl`` lock on
``<venv>.lock`` serialises builders, so parallel pytest processes build it once; a directory
is only ever visible under its final name when complete (``side-env.json`` inside marks it).

The base interpreter is the one running this module (for a venv: its base interpreter), or
``$CATALOG_NNUNET_V1_BASE_PYTHON``.

Standard library only. Also a script, so CI can pre-build the environment::

    python tests/parity/side_env.py          # prints the side python's path
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-nnunet-v1.txt"
NO_DEPS_PREFIX = "#no-deps "
MARKER = "side-env.json"
ENV_VAR_VENV = "CATALOG_NNUNET_V1_VENV"
ENV_VAR_BASE_PYTHON = "CATALOG_NNUNET_V1_BASE_PYTHON"

# Variables that would make the side interpreter see the main environment's packages or settings.
_LEAKY_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONSAFEPATH",
               "VIRTUAL_ENV", "CONDA_PREFIX", "__PYVENV_LAUNCHER__", "PYTHONEXECUTABLE")

# Checked once after installation (and cheaply, in part, on every cache hit).
_VERIFY = r"""
import importlib.util, json, sys
import numpy
assert numpy.__version__.startswith("1."), "numpy %s in the side env, need 1.x" % numpy.__version__
assert importlib.util.find_spec("torch") is None, "torch is installed in the side env; it must not be"
import nnunet
if len(sys.argv) > 1:   # full check: the shims make the crop / analyzer / planner modules importable
    sys.path.insert(0, sys.argv[1])
    import v1_shims
    v1_shims.install()
    import nnunet.experiment_planning.utils
    import nnunet.experiment_planning.DatasetAnalyzer
    import nnunet.experiment_planning.experiment_planner_baseline_3DUNet_v21
    import nnunet.experiment_planning.experiment_planner_baseline_2DUNet_v21
from importlib.metadata import version
print(json.dumps({"python": sys.version.split()[0], "numpy": numpy.__version__,
                  "nnunet": version("nnunet"), "batchgenerators": version("batchgenerators")}))
"""


class SideEnvError(RuntimeError):
    """The nnU-Net v1 side environment could not be built or is unusable."""


def requirements_digest(path: Path = REQUIREMENTS) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def venv_dir() -> Path:
    """The cache directory of the side venv (it may not exist yet)."""
    override = os.environ.get(ENV_VAR_VENV)
    if override:
        return Path(override).expanduser().absolute()
    return Path.home() / ".cache" / "catalog" / ("nnunet-v1-" + requirements_digest()[:12])


def venv_python(root: Path) -> Path:
    return root / "bin" / "python"


def clean_env(extra: dict[str, str] | None = None, *, keep_pip_settings: bool = False) -> dict[str, str]:
    """Environment for a side-env subprocess: the caller's, minus everything that would leak the
    main venv (PYTHONPATH, VIRTUAL_ENV, ...) or steer nnU-Net (nnUNet_*, RESULTS_FOLDER).
    pip's own settings (PIP_*, proxies, certificates) are kept only for the build."""
    env = {}
    for k, v in os.environ.items():
        if k in _LEAKY_VARS or k.startswith("nnUNet_") or k == "RESULTS_FOLDER":
            continue
        if k.startswith("PIP_") and not keep_pip_settings:
            continue
        env[k] = v
    # drop the main venv's bin/ from PATH (console scripts of the wrong environment)
    venv_bins = {os.path.join(p, "bin") for p in (os.environ.get("VIRTUAL_ENV"), sys.prefix)
                 if p and p != sys.base_prefix}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", os.defpath).split(os.pathsep)
                                  if p.rstrip("/") not in venv_bins)
    env["PYTHONNOUSERSITE"] = "1"      # no ~/.local site-packages
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if extra:
        env.update(extra)
    return env


def _base_python() -> str:
    override = os.environ.get(ENV_VAR_BASE_PYTHON)
    if override:
        return override
    # inside a venv, build the side venv from the base interpreter, not from the main venv
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if os.path.exists(base) else sys.executable


def _run(cmd: list[str], what: str, *, env: dict[str, str], timeout: float = 1800) -> str:
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise SideEnvError("%s timed out after %ss: %s\n%s" % (what, timeout, " ".join(cmd), e.output or ""))
    if proc.returncode != 0:
        raise SideEnvError("%s failed (exit %d): %s\n---- output ----\n%s" % (
            what, proc.returncode, " ".join(cmd), proc.stdout))
    return proc.stdout


def _parse_requirements(path: Path) -> tuple[list[str], list[str]]:
    """Split the file into the lines for the normal install and the ``#no-deps`` specs."""
    no_deps = []
    for line in path.read_text().splitlines():
        if line.startswith(NO_DEPS_PREFIX):
            no_deps.extend(line[len(NO_DEPS_PREFIX):].split("#", 1)[0].split())
    if not no_deps:
        raise SideEnvError("%s has no '%s' lines (nnunet, batchgenerators)" % (path, NO_DEPS_PREFIX.strip()))
    return [str(path)], no_deps


def _quick_check(root: Path) -> bool:
    """A complete build has the marker and an interpreter that imports numpy 1.x and nnunet."""
    py = venv_python(root)
    if not (root / MARKER).is_file() or not py.exists():
        return False
    proc = subprocess.run([str(py), "-c", _VERIFY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=clean_env(), text=True, stdin=subprocess.DEVNULL)
    return proc.returncode == 0


def _relocate_scripts(tmp: Path, final: Path) -> None:
    """Console scripts and activate files name the build directory; point them at the final one.
    (The harness always runs ``bin/python``, so this is for people using the venv by hand.)"""
    old, new = str(tmp), str(final)
    for p in sorted((tmp / "bin").iterdir()):
        if p.is_symlink() or not p.is_file():
            continue
        try:
            text = p.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if old in text:
            p.write_text(text.replace(old, new))
    cfg = tmp / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace(old, new))


def _build(final: Path, log=print) -> None:
    t0 = time.time()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="." + final.name + ".build-", dir=final.parent))
    try:
        base = _base_python()
        env = clean_env(keep_pip_settings=True)
        log("[side_env] building %s with %s (about a minute) ..." % (final, base))
        # tmp exists (mkdtemp); venv --clear would refuse nothing, but start from an empty dir
        _run([base, "-m", "venv", str(tmp)], "python -m venv", env=env)
        py = str(venv_python(tmp))
        req_args, no_deps = _parse_requirements(REQUIREMENTS)
        pip = [py, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
               "--no-warn-script-location"]
        out = _run(pip + ["-r"] + req_args, "pip install -r %s" % REQUIREMENTS.name, env=env)
        out += _run(pip + ["--no-deps"] + no_deps, "pip install --no-deps %s" % " ".join(no_deps), env=env)
        try:
            info = json.loads(_run([py, "-c", _VERIFY, str(HERE)], "side env check", env=clean_env())
                              .strip().splitlines()[-1])
        except SideEnvError as e:
            raise SideEnvError("%s\n---- pip output ----\n%s" % (e, out[-20000:])) from None
        freeze = _run([py, "-m", "pip", "freeze", "--all"], "pip freeze", env=clean_env()).split()
        _relocate_scripts(tmp, final)
        info.update({"requirements_sha256": requirements_digest(), "base_python": base,
                     "pip_freeze": freeze, "build_seconds": round(time.time() - t0, 1),
                     "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700
        if final.exists():  # an incomplete or broken leftover (we hold the lock): move it out of the way
            junk = Path(tempfile.mkdtemp(prefix="." + final.name + ".stale-", dir=final.parent))
            os.rename(final, junk / "venv")
            shutil.rmtree(junk, ignore_errors=True)
        os.rename(tmp, final)
        log("[side_env] built %s in %.0f s" % (final, time.time() - t0))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def _ensure(root: Path) -> Path:
    if _quick_check(root):
        return venv_python(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    lock_path = root.parent / (root.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)    # blocks while another process builds
        try:
            if not _quick_check(root):      # someone else may have finished meanwhile
                _build(root, log=lambda m: print(m, file=sys.stderr, flush=True))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not _quick_check(root):
        raise SideEnvError("side env at %s is still not usable after a build" % root)
    return venv_python(root)


def ensure_side_env() -> Path:
    """Return the side env's python executable, building the venv first if needed.

    Raises SideEnvError (with pip's output) if the build fails."""
    return _ensure(venv_dir())


def side_env_info() -> dict:
    """The marker written at build time: versions, pip freeze, build seconds."""
    return json.loads((venv_dir() / MARKER).read_text())


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Build (if needed) the nnU-Net v1 side env; print its python.")
    ap.add_argument("--info", action="store_true", help="print the build marker (versions, freeze) too")
    a = ap.parse_args(argv)
    try:
        py = ensure_side_env()
    except SideEnvError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    if a.info:
        print(json.dumps(side_env_info(), indent=2), file=sys.stderr)
    print(py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
