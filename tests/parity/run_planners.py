#!/usr/bin/env python3
"""Run the REAL nnU-Net v1 experiment planners on a cropped folder. SIDE ENV ONLY.

Usage: run_planners.py CROPPED_DIR OUT_DIR [--planners 3d,2d] [--task TaskNNN_Name]

CROPPED_DIR is a v1 cropped task folder (``.../TaskNNN_Name`` with dataset_properties.pkl,
dataset.json, <id>.npz, <id>.pkl), written by v1 (run_v1.py) or by ``catalog export nnunet-v1``.
``plan_experiment()`` rewrites every <id>.pkl (adds ``use_nonzero_mask_for_norm``), so the planners
run on a copy and CROPPED_DIR is never modified:

TaskNNN_Name is --task, default the basename of CROPPED_DIR.

    OUT_DIR/nnUNet_cropped_data/TaskNNN_Name/   pkl + json copied, npz symlinked to CROPPED_DIR
    OUT_DIR/nnUNet_preprocessed/TaskNNN_Name/   dataset_properties.pkl, dataset.json (copied first, as
                                                nnUNet_plan_and_preprocess does), then
                                                nnUNetPlansv2.1_plans_3D.pkl, nnUNetPlansv2.1_plans_2D.pkl
    OUT_DIR/planners.json                       summary: plans file paths, key numbers, seconds

Loading dataset_properties.pkl and every <id>.pkl under numpy 1.26 is part of the check.
Exit 0 iff every requested planner ran. Paths inside the plans (``list_of_npz_files``,
``preprocessed_data_folder``) point into OUT_DIR; compare.py --plans compares them relative to the
``nnUNet_cropped_data`` / ``nnUNet_preprocessed`` folders.
"""
import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _plain(o):
    import numpy as np
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, np.ndarray):
        return _plain(o.tolist())
    if isinstance(o, np.generic):
        return o.item()
    return o


SUMMARY_KEYS = ("num_stages", "num_modalities", "modalities", "normalization_schemes", "use_mask_for_norm",
                "num_classes", "all_classes", "transpose_forward", "transpose_backward", "data_identifier",
                "base_num_features", "conv_per_stage", "preprocessor_name")


def copy_cropped(src, dst):
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        p = os.path.join(src, name)
        if not os.path.isfile(p):
            continue  # gt_segmentations/ is not read by the planners
        if name.endswith(".npz"):
            os.symlink(os.path.abspath(p), os.path.join(dst, name))
        else:
            shutil.copy2(p, os.path.join(dst, name))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cropped_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--planners", default="3d,2d")
    ap.add_argument("--task", help="task folder name for the copy (default: basename of CROPPED_DIR)")
    a = ap.parse_args(argv)

    src = os.path.abspath(a.cropped_dir.rstrip("/"))
    task = a.task or os.path.basename(src)
    out = os.path.abspath(a.out_dir)
    work = os.path.join(out, "nnUNet_cropped_data", task)
    pp = os.path.join(out, "nnUNet_preprocessed", task)
    for d in (work, pp):
        if os.path.exists(d):
            shutil.rmtree(d)
    copy_cropped(src, work)
    os.makedirs(pp)
    shutil.copy2(os.path.join(work, "dataset_properties.pkl"), pp)
    shutil.copy2(os.path.join(work, "dataset.json"), pp)

    # nnunet.paths reads these at import; the planners get explicit folders, these only keep it quiet
    os.environ["nnUNet_raw_data_base"] = out
    os.environ["nnUNet_preprocessed"] = os.path.join(out, "nnUNet_preprocessed")
    os.environ["RESULTS_FOLDER"] = os.path.join(out, "results_unused")
    sys.path.insert(0, HERE)
    import v1_shims
    v1_shims.install()
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunet.experiment_planning.experiment_planner_baseline_2DUNet_v21 import ExperimentPlanner2D_v21
    from nnunet.experiment_planning.experiment_planner_baseline_3DUNet_v21 import ExperimentPlanner3D_v21

    classes = {"3d": ExperimentPlanner3D_v21, "2d": ExperimentPlanner2D_v21}
    summary = {"task": task, "source": src, "out": out, "cropped_copy": work, "preprocessed": pp, "plans": {}}
    for name in [p.strip() for p in a.planners.split(",") if p.strip()]:
        t0 = time.perf_counter()
        planner = classes[name](work, pp)
        planner.plan_experiment()
        plans = load_pickle(planner.plans_fname)
        entry = {k: _plain(plans[k]) for k in SUMMARY_KEYS if k in plans}
        entry["plans_per_stage"] = {str(s): _plain(st) for s, st in plans["plans_per_stage"].items()}
        entry["plans_file"] = planner.plans_fname
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        summary["plans"][name] = entry
    with open(os.path.join(out, "planners.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("run_planners: %s -> %s" % (task, ", ".join(e["plans_file"] for e in summary["plans"].values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
