#!/usr/bin/env python3
"""Deep-compare two nnU-Net v1 cropped folders, or two v1 plans pickles. SIDE ENV (numpy 1.x).

Usage:
    compare.py DIR_V1 DIR_OURS [--json] [--map-path OLD=NEW] [--max N]
    compare.py --plans PLANS_V1.pkl PLANS_OURS.pkl [--json] [--max N]

Exit status 0 iff identical, 1 if there are differences, 2 on usage errors.

Everything is loaded under the side env's numpy 1.26 (what v1 runs on), so a pickle that does not
load there is reported as a difference.

Folders (DIR_V1 is the reference):
  * the same top-level files and folders, and the same ``gt_segmentations/`` listing;
  * every ``*.pkl``: container types (dict vs OrderedDict, list vs tuple vs ndarray), key order, key
    types (str vs int vs np.int64, tuple keys element by element), numpy dtypes, scalar types
    (float vs np.float32 vs np.float64, bool vs np.bool_, int vs np.int64), values EXACT (NaN equals
    NaN; 0.0 and -0.0 differ). The one tolerance: np.float32 ``mean`` and ``sd`` inside intensity
    properties (global and ``local_props``, in dataset_properties.pkl, intensityproperties.pkl or a
    plans pkl) may differ by rtol 1e-6 (reported as notes, not differences);
  * every ``*.npz``: key set, dtype, shape, values bit-identical;
  * ``dataset.json`` and every other file (incl. ``gt_segmentations/*``): bytes identical (for
    dataset.json the parsed JSON is compared too, to say what differs).
  Paths stored in the pickles (``list_of_data_files``, ``seg_file``) are compared verbatim;
  ``--map-path OLD=NEW`` rewrites strings of DIR_V1's pickles starting with OLD first (only for
  comparing two v1 runs made under different base folders).

Plans: every key, all equal, with the same float32 mean/sd tolerance. ``list_of_npz_files`` and
``preprocessed_data_folder`` are absolute paths into wherever run_planners.py worked, so they are
compared from their last ``nnUNet_cropped_data/`` or ``nnUNet_preprocessed/`` component on.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
from collections import OrderedDict

import numpy as np

MEAN_SD_RTOL = 1e-6
TOLERANT_KEYS = ("mean", "sd")
PLANS_PATH_KEYS = ("list_of_npz_files", "preprocessed_data_folder")
PLANS_PATH_ANCHORS = ("nnUNet_cropped_data/", "nnUNet_preprocessed/")


def tname(o) -> str:
    """Type name as reported: ndarray[float32], np.float64, float, OrderedDict, ..."""
    if isinstance(o, np.ndarray):
        return "ndarray[%s]" % o.dtype
    t = type(o)
    if isinstance(o, np.generic):
        return "np." + t.__name__
    if t.__module__ in ("builtins", "collections"):
        return t.__name__
    return "%s.%s" % (t.__module__, t.__qualname__)


def short(o, limit=120) -> str:
    if isinstance(o, np.ndarray):
        s = "%s%s %s" % (tname(o), list(o.shape), np.array2string(o.ravel()[:8], precision=9, separator=","))
    elif isinstance(o, (float, np.floating)):
        s = repr(float(o)) if not isinstance(o, float) else repr(o)
    else:
        s = repr(o)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _float_eq(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


class Comparer:
    def __init__(self, path_map: tuple[str, str] | None = None, plans: bool = False):
        self.path_map = path_map
        self.plans = plans
        self.differences: list[str] = []
        self.notes: list[str] = []

    def diff(self, where: str, msg: str) -> None:
        self.differences.append("%s: %s" % (where, msg))

    # ---- values -------------------------------------------------------------------------------
    def _map(self, s):
        if self.path_map and isinstance(s, str) and s.startswith(self.path_map[0]):
            return self.path_map[1] + s[len(self.path_map[0]):]
        return s

    @staticmethod
    def _plans_path(s):
        if not isinstance(s, str):
            return s
        cut = max(s.rfind(anchor) for anchor in PLANS_PATH_ANCHORS)
        return s[cut:] if cut >= 0 else s

    def compare(self, a, b, where: str, key=None, intensity: bool = False, plans_path: bool = False) -> None:
        """a is the reference (v1), b ours."""
        if type(a) is not type(b):
            self.diff(where, "type v1 %s != ours %s (v1 %s, ours %s)" % (tname(a), tname(b), short(a, 60), short(b, 60)))
            if not (isinstance(a, (dict, list, tuple)) and isinstance(b, (dict, list, tuple))):
                return  # scalars / arrays of another type: the type difference says it all
        if isinstance(a, dict) and isinstance(b, dict):
            self._compare_dict(a, b, where, intensity, plans_path)
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                self.diff(where, "length v1 %d != ours %d" % (len(a), len(b)))
            for i, (x, y) in enumerate(zip(a, b)):
                self.compare(x, y, "%s[%d]" % (where, i), None, intensity, plans_path)
        elif isinstance(a, np.ndarray):
            self._compare_array(a, b, where)
        elif isinstance(a, (float, np.floating)):
            self._compare_float(a, b, where, key, intensity)
        elif isinstance(a, str):
            x, y = self._map(a), b
            if plans_path:
                x, y = self._plans_path(x), self._plans_path(y)
            if x != y:
                self.diff(where, "v1 %r != ours %r" % (x, y))
        else:
            try:
                eq = bool(a == b)
            except Exception as e:  # pragma: no cover - exotic objects
                self.diff(where, "cannot compare %s: %s" % (tname(a), e))
                return
            if not eq:
                self.diff(where, "v1 %s != ours %s" % (short(a), short(b)))

    def _compare_float(self, a, b, where, key, intensity):
        fa, fb = float(a), float(b)
        if _float_eq(fa, fb):
            return
        if (intensity and key in TOLERANT_KEYS and isinstance(a, np.float32) and isinstance(b, np.float32)
                and not (math.isnan(fa) or math.isnan(fb))
                and abs(fa - fb) <= MEAN_SD_RTOL * max(abs(fa), abs(fb))):
            self.notes.append("%s: float32 %s within rtol %g: v1 %r, ours %r" % (where, key, MEAN_SD_RTOL, fa, fb))
            return
        self.diff(where, "v1 %r != ours %r (%s)" % (fa, fb, tname(a)))

    def _compare_array(self, a: np.ndarray, b: np.ndarray, where: str) -> None:
        if a.dtype != b.dtype:
            self.diff(where, "dtype v1 %s != ours %s" % (a.dtype, b.dtype))
            return
        if a.shape != b.shape:
            self.diff(where, "shape v1 %s != ours %s" % (a.shape, b.shape))
            return
        if a.dtype.kind in "fc":
            neq = ~((a == b) | (np.isnan(a) & np.isnan(b)))
            neq |= (a == 0) & (b == 0) & (np.signbit(a) != np.signbit(b))
        elif a.dtype.kind == "O":
            neq = np.array([not _deep_equal(x, y) for x, y in zip(a.ravel(), b.ravel())], dtype=bool).reshape(a.shape)
        else:
            neq = a != b
        n = int(np.count_nonzero(neq))
        if n:
            first = tuple(int(i) for i in np.argwhere(neq)[0])
            self.diff(where, "%d of %d values differ; first at %s: v1 %r, ours %r" % (
                n, a.size, first, a[first].item(), b[first].item()))

    def _compare_dict(self, a: dict, b: dict, where: str, intensity: bool, plans_path: bool) -> None:
        ka, kb = list(a), list(b)
        b_key = {k: k for k in kb}          # b's own key object for a key that is equal in value
        only_a = [k for k in ka if k not in b]
        only_b = [k for k in kb if k not in a]
        if only_a:
            self.diff(where, "keys only in v1: %s" % short(only_a, 300))
        if only_b:
            self.diff(where, "keys only in ours: %s" % short(only_b, 300))
        common_a = [k for k in ka if k in b]
        common_b = [k for k in kb if k in a]
        if common_a != common_b:
            self.diff(where, "key order differs: v1 %s vs ours %s" % (short(common_a, 200), short(common_b, 200)))
        for k in common_a:
            kb_ = b_key[k]
            sub = "%s[%r]" % (where, k)
            self._compare_key(k, kb_, sub)
            self.compare(a[k], b[kb_], sub, k,
                         intensity or k == "intensityproperties",
                         plans_path or (self.plans and k in PLANS_PATH_KEYS and where == "<plans>"))

    def _compare_key(self, ka, kb, where: str) -> None:
        """Equal-valued keys must also have the same type (tuple keys: element by element)."""
        if type(ka) is not type(kb):
            self.diff(where, "key type v1 %s != ours %s" % (tname(ka), tname(kb)))
        elif isinstance(ka, tuple):
            for i, (x, y) in enumerate(zip(ka, kb)):
                if type(x) is not type(y):
                    self.diff(where, "key element %d type v1 %s != ours %s" % (i, tname(x), tname(y)))


def _deep_equal(x, y) -> bool:
    c = Comparer()
    c.compare(x, y, "")
    return not c.differences


def _load_pickle(path: str):
    with open(path, "rb") as f:
        return pickle.load(f)


def _entries(d: str) -> tuple[list[str], list[str]]:
    names = sorted(os.listdir(d))
    return ([n for n in names if os.path.isfile(os.path.join(d, n))],
            [n for n in names if os.path.isdir(os.path.join(d, n))])


def _bytes_equal(pa: str, pb: str) -> bool:
    if os.path.getsize(pa) != os.path.getsize(pb):
        return False
    with open(pa, "rb") as fa, open(pb, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _compare_npz(c: Comparer, pa: str, pb: str, name: str) -> None:
    with np.load(pa, allow_pickle=False) as za, np.load(pb, allow_pickle=False) as zb:
        fa, fb = sorted(za.files), sorted(zb.files)
        if fa != fb:
            c.diff(name, "npz keys v1 %s != ours %s" % (fa, fb))
        for k in fa:
            if k in fb:
                c.compare(za[k], zb[k], "%s[%r]" % (name, k))


def compare_folders(dir_v1: str, dir_ours: str, path_map: tuple[str, str] | None = None) -> Comparer:
    c = Comparer(path_map=path_map)
    for d in (dir_v1, dir_ours):
        if not os.path.isdir(d):
            c.diff("<folder>", "not a directory: %s" % d)
            return c
    files_a, dirs_a = _entries(dir_v1)
    files_b, dirs_b = _entries(dir_ours)
    # catalog's provenance sidecar (issue 5) is the one file catalog adds on purpose; nnU-Net
    # reads only *.npz, *.pkl and dataset.json from the folder.
    files_b = [f for f in files_b if f != "catalog_provenance.json"]
    for kind, xa, xb in (("files", files_a, files_b), ("folders", dirs_a, dirs_b)):
        if set(xa) - set(xb):
            c.diff("<%s>" % kind, "only in v1: %s" % sorted(set(xa) - set(xb)))
        if set(xb) - set(xa):
            c.diff("<%s>" % kind, "only in ours: %s" % sorted(set(xb) - set(xa)))
    for name in files_a:
        if name not in files_b:
            continue
        pa, pb = os.path.join(dir_v1, name), os.path.join(dir_ours, name)
        if name.endswith(".pkl"):
            try:
                xa, xb = _load_pickle(pa), _load_pickle(pb)
            except Exception as e:
                c.diff(name, "cannot load under numpy %s: %s: %s" % (np.__version__, type(e).__name__, e))
                continue
            c.compare(xa, xb, name, intensity=(name == "intensityproperties.pkl"))
        elif name.endswith(".npz"):
            try:
                _compare_npz(c, pa, pb, name)
            except Exception as e:
                c.diff(name, "cannot load npz: %s: %s" % (type(e).__name__, e))
        elif not _bytes_equal(pa, pb):
            what = "bytes differ"
            if name.endswith(".json"):
                try:
                    with open(pa) as fa, open(pb) as fb:
                        ja, jb = json.load(fa, object_pairs_hook=OrderedDict), json.load(fb, object_pairs_hook=OrderedDict)
                    n = len(c.differences)
                    c.compare(ja, jb, name)
                    if len(c.differences) == n:
                        what = "bytes differ, parsed JSON is identical (v1 copies the raw file verbatim)"
                except ValueError as e:
                    what = "bytes differ; not valid JSON: %s" % e
            c.diff(name, what)
    for sub in dirs_a:
        if sub not in dirs_b:
            continue
        la, lb = sorted(os.listdir(os.path.join(dir_v1, sub))), sorted(os.listdir(os.path.join(dir_ours, sub)))
        if la != lb:
            c.diff(sub + "/", "listing differs: only in v1 %s, only in ours %s" % (
                sorted(set(la) - set(lb)), sorted(set(lb) - set(la))))
        for name in la:
            pa, pb = os.path.join(dir_v1, sub, name), os.path.join(dir_ours, sub, name)
            if name in lb and os.path.isfile(pa) and os.path.isfile(pb) and not _bytes_equal(pa, pb):
                c.diff("%s/%s" % (sub, name), "bytes differ")
    return c


def compare_plans(plans_v1: str, plans_ours: str) -> Comparer:
    c = Comparer(plans=True)
    try:
        a, b = _load_pickle(plans_v1), _load_pickle(plans_ours)
    except Exception as e:
        c.diff("<plans>", "cannot load: %s: %s" % (type(e).__name__, e))
        return c
    c.compare(a, b, "<plans>")
    return c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="v1's cropped folder (or plans pkl with --plans): the reference")
    ap.add_argument("b", help="our cropped folder (or plans pkl with --plans)")
    ap.add_argument("--plans", action="store_true", help="compare two plans pickles instead of two folders")
    ap.add_argument("--json", action="store_true", help="print one JSON object {identical, differences, notes}")
    ap.add_argument("--map-path", metavar="OLD=NEW", help="rewrite strings in v1's pickles starting with OLD")
    ap.add_argument("--max", type=int, default=200, help="print at most this many differences (text mode)")
    a = ap.parse_args(argv)
    path_map = None
    if a.map_path:
        if "=" not in a.map_path:
            ap.error("--map-path needs OLD=NEW")
        path_map = tuple(a.map_path.split("=", 1))
    c = compare_plans(a.a, a.b) if a.plans else compare_folders(a.a, a.b, path_map)
    if a.json:
        print(json.dumps({"identical": not c.differences, "differences": c.differences, "notes": c.notes,
                          "numpy": np.__version__}))
    else:
        for line in c.differences[:a.max]:
            print(line)
        if len(c.differences) > a.max:
            print("... and %d more" % (len(c.differences) - a.max))
        for line in c.notes:
            print("note: " + line)
        print("IDENTICAL" if not c.differences else "%d DIFFERENCES" % len(c.differences))
    return 0 if not c.differences else 1


if __name__ == "__main__":
    sys.exit(main())
