"""Pickles that numpy 1.x (nnU-Net v1's world) can load, whatever numpy writes them.

Under numpy 2, ndarrays and numpy scalars pickle as `numpy._core.multiarray...`, a module
numpy <= 1.25 does not have (`No module named 'numpy._core'`). The pickler below writes the
numpy 1 names (`numpy.core...`), which numpy 1.x and 2.x both import.
"""
from __future__ import annotations

import io
import pickle

PROTOCOL = 4  # what nnU-Net v1 writes on Python >= 3.8 (pickle's default there)


class _Numpy1Pickler(pickle._Pickler):  # the pure-Python pickler lets us rename globals
    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if module.startswith("numpy._core"):
            qualname = name or getattr(obj, "__qualname__", obj.__name__)
            self._write_global("numpy.core" + module[len("numpy._core"):], qualname)
            return
        super().save_global(obj, name)

    def _write_global(self, module: str, qualname: str) -> None:
        # protocol 4: STACK_GLOBAL with two memoised strings, as pickle itself does
        self.save(module)
        self.save(qualname)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(_GlobalMarker(module, qualname))


class _GlobalMarker:
    """Stand-in memo key for a renamed global (pickle memoises the object it wrote)."""

    def __init__(self, module: str, qualname: str):
        self.key = (module, qualname)


def dumps(obj) -> bytes:
    buffer = io.BytesIO()
    _Numpy1Pickler(buffer, protocol=PROTOCOL).dump(obj)
    return buffer.getvalue()


def write_pickle(obj, path) -> None:
    with open(path, "wb") as f:
        f.write(dumps(obj))
