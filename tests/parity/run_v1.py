#!/usr/bin/env python3
"""Run the REAL nnU-Net v1 (nnunet==1.7.1) crop + DatasetAnalyzer on a raw task. SIDE ENV ONLY.

Usage (with the side env's python, see side_env.py):
    run_v1.py RAW_BASE TASK_NAME [--intensity always|cli] [--processes N] [--keep-existing] [--info FILE]

Input : RAW_BASE/nnUNet_raw_data/TASK_NAME/ (dataset.json, imagesTr/, labelsTr/)
Output: RAW_BASE/nnUNet_cropped_data/TASK_NAME/ exactly as v1 writes it:
    <id>.npz, <id>.pkl, gt_segmentations/, dataset.json          crop(TASK_NAME, False, N)
    dataset_properties.pkl, intensityproperties.pkl (if collected)  DatasetAnalyzer.analyze_dataset()
    props_per_case.pkl                                            see below
Nothing else is written into that folder (``--info`` JSON goes where you say).

Stages mirror ``nnUNet_plan_and_preprocess.main()``: ``crop(task, False, N)``, then
``DatasetAnalyzer(cropped, overwrite=False, num_processes=N).analyze_dataset(collect)`` with
collect = True (``--intensity always``, default) or the CLI rule (``--intensity cli``: True only if
"CT" or "ct" is one of the dataset.json modality values).

RAW_BASE is made absolute with ``os.path.abspath`` (no symlink resolution) and put verbatim into
``nnUNet_raw_data_base`` before nnunet is imported, so the paths v1 stores in every ``<id>.pkl``
(``list_of_data_files``, ``seg_file``) are ``RAW_BASE/nnUNet_raw_data/TASK_NAME/...``. An existing
``RAW_BASE/nnUNet_cropped_data/TASK_NAME`` is deleted first unless ``--keep-existing`` (then v1's
own override=False semantics apply: existing cases are not re-cropped and cached
intensityproperties.pkl is re-used).

props_per_case.pkl (catalog writes the same file): v1.7.1's analyze_dataset no longer writes it; this
is the file nnU-Net <= 1.1.3's ``analyse_segmentations`` wrote, computed with 1.7.1's own code:
    OrderedDict over analyzer.patient_identifiers (sorted npz names) of a plain dict
    {'has_classes': analyzer._get_unique_labels(pid)      (what 1.7.1 analyse_segmentations stores),
     'only_one_region', 'volume_per_class', 'region_volume_per_class'}
with the last three from the dead ``analyzer._load_seg_analyze_classes(pid, all_classes)``, called
as <= 1.1.3 did: ``all_classes = np.array([int(k) for k in labels.keys()]); all_classes =
all_classes[all_classes > 0]`` (an int64 ndarray, dataset.json label order).
Resulting types, read from the installed 1.7.1 source (``_check_if_all_in_one_region``,
``_collect_class_and_region_sizes``) and checked by ``_check_props_types`` below on every run:
    has_classes             ndarray float32, np.unique(seg) of the cropped seg (incl. -1, 0)
    only_one_region         OrderedDict; keys in this order: the tuple of ALL classes
                            (tuple(list(all_classes)) -> tuple of np.int64), then (c,) per class
                            (1-tuples of np.int64), classes in dataset.json order; values Python
                            bool (numlabels == 1 with skimage's default full connectivity)
    volume_per_class        OrderedDict {np.int64 c: np.float64 np.sum(seg == c) * vol_per_voxel}
                            where vol_per_voxel = np.prod(itk_spacing) (np.float64, x*y*z order)
    region_volume_per_class OrderedDict {np.int64 c: list of np.float64 component volumes}, in
                            skimage label order; [] if c is absent
The per-case container is a plain dict in that key order (as <= 1.1.3 built it: ``props = dict()``).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

PROPS_KEYS = ("has_classes", "only_one_region", "volume_per_class", "region_volume_per_class")


def legacy_all_classes(labels):
    """all_classes exactly as nnU-Net <= 1.1.3's analyse_segmentations built it."""
    import numpy as np
    all_classes = np.array([int(k) for k in labels.keys()])
    all_classes = all_classes[all_classes > 0]
    return all_classes


def _check_props_types(props_per_case):
    """Fail loudly if nnunet produced other types than documented in the module docstring."""
    import numpy as np
    from collections import OrderedDict
    for pid, props in props_per_case.items():
        assert type(props) is dict and tuple(props) == PROPS_KEYS, (pid, list(props))
        hc = props["has_classes"]
        assert isinstance(hc, np.ndarray) and hc.dtype == np.float32, (pid, type(hc))
        oor = props["only_one_region"]
        assert type(oor) is OrderedDict, type(oor)
        for k, v in oor.items():
            assert type(k) is tuple and all(type(c) is np.int64 for c in k), (pid, k)
            assert type(v) is bool, (pid, k, type(v))
        for name in ("volume_per_class", "region_volume_per_class"):
            d = props[name]
            assert type(d) is OrderedDict and all(type(k) is np.int64 for k in d), (pid, name)
        assert all(type(v) is np.float64 for v in props["volume_per_class"].values()), pid
        for v in props["region_volume_per_class"].values():
            assert type(v) is list and all(type(x) is np.float64 for x in v), pid


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw_base", help="folder that contains nnUNet_raw_data/TASK_NAME")
    ap.add_argument("task_name", help="TaskNNN_Name")
    ap.add_argument("--intensity", choices=("always", "cli"), default="always")
    ap.add_argument("--processes", type=int, default=2, help="pool size for crop and analysis (results do not depend on it)")
    ap.add_argument("--keep-existing", action="store_true", help="do not delete an existing cropped folder first")
    ap.add_argument("--info", help="write versions, options and per-stage seconds to this JSON file")
    a = ap.parse_args(argv)

    raw_base = os.path.abspath(a.raw_base)
    task = a.task_name
    raw_task = os.path.join(raw_base, "nnUNet_raw_data", task)
    if not os.path.isfile(os.path.join(raw_task, "dataset.json")):
        ap.error("no raw task at %s (dataset.json missing)" % raw_task)
    cropped = os.path.join(raw_base, "nnUNet_cropped_data", task)
    if os.path.isdir(cropped) and not a.keep_existing:
        shutil.rmtree(cropped)

    if any(m == "nnunet.paths" for m in sys.modules):
        raise RuntimeError("nnunet.paths imported before the nnUNet_* variables were set")
    scratch = tempfile.mkdtemp(prefix="catalog-run_v1-")
    os.environ["nnUNet_raw_data_base"] = raw_base
    os.environ["nnUNet_preprocessed"] = os.path.join(scratch, "nnUNet_preprocessed")
    os.environ["RESULTS_FOLDER"] = os.path.join(scratch, "results")
    try:
        info = run(task, cropped, a.intensity, a.processes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    info.update({"raw_base": raw_base, "task": task, "cropped_dir": cropped, "processes": a.processes,
                 "intensity_mode": a.intensity})
    if a.info:
        with open(a.info, "w") as f:
            json.dump(info, f, indent=2)
    print("run_v1: %s -> %s %s" % (task, cropped, json.dumps(info["seconds"])))
    return 0


def run(task, cropped_expected, intensity_mode, processes):
    sys.path.insert(0, HERE)
    import v1_shims
    v1_shims.install()

    from collections import OrderedDict
    from multiprocessing import Pool

    import numpy as np
    from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_pickle
    from nnunet.experiment_planning.DatasetAnalyzer import DatasetAnalyzer
    from nnunet.experiment_planning.utils import crop
    from nnunet.paths import nnUNet_cropped_data

    seconds = {}
    cropped = join(nnUNet_cropped_data, task)
    assert cropped == cropped_expected, (cropped, cropped_expected)

    t0 = time.perf_counter()
    crop(task, False, processes)
    seconds["crop"] = time.perf_counter() - t0

    modalities = list(load_json(join(cropped, "dataset.json"))["modality"].values())
    if intensity_mode == "cli":  # nnUNet_plan_and_preprocess.main()
        collect = True if (("CT" in modalities) or ("ct" in modalities)) else False
    else:
        collect = True
    t0 = time.perf_counter()
    analyzer = DatasetAnalyzer(cropped, overwrite=False, num_processes=processes)
    analyzer.analyze_dataset(collect)
    seconds["analyze_dataset"] = time.perf_counter() - t0

    # props_per_case.pkl: see the module docstring
    t0 = time.perf_counter()
    pids = analyzer.patient_identifiers
    all_classes = legacy_all_classes(analyzer.get_classes())
    with Pool(processes) as pool:
        unique = pool.map(analyzer._get_unique_labels, pids)
        legacy = pool.starmap(analyzer._load_seg_analyze_classes, zip(pids, [all_classes] * len(pids)))
    props_per_case = OrderedDict()
    for pid, has_classes, (unique_classes, only_one_region, volume_per_class, region_volume_per_class) \
            in zip(pids, unique, legacy):
        assert np.array_equal(has_classes, unique_classes), pid
        props_per_case[pid] = {"has_classes": has_classes, "only_one_region": only_one_region,
                               "volume_per_class": volume_per_class,
                               "region_volume_per_class": region_volume_per_class}
    _check_props_types(props_per_case)
    save_pickle(props_per_case, analyzer.props_per_case_file)
    seconds["props_per_case"] = time.perf_counter() - t0

    return {"collect_intensityproperties": collect, "case_ids": list(pids),
            "seconds": {k: round(v, 3) for k, v in seconds.items()}, "versions": versions()}


def versions():
    from importlib.metadata import version
    import numpy
    out = {"python": sys.version.split()[0], "numpy": numpy.__version__}
    for dist in ("nnunet", "batchgenerators", "scipy", "scikit-image", "SimpleITK"):
        out[dist] = version(dist)
    return out


if __name__ == "__main__":
    sys.exit(main())
