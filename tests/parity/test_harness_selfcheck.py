"""Self-checks of the parity harness (no catalog export involved).

(a) the comparer accepts identical output: real v1 run twice on the same synthetic task gives
    folders that compare identical (different pool sizes; two raw bases, paths mapped);
(b) the comparer can fail: each single, small mutation of a copy of v1's output (one float, key
    order, a scalar type, a key type, one npz voxel, crop_bbox list -> tuple, files, ...) is reported,
    at the right place, and nothing else is; re-pickling everything unchanged under the main env's
    numpy is reported as identical (the control);
(c) the same for plans pickles from the real planners.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import OrderedDict

import numpy as np
import pytest

import harness
from catalog.synthetic import make_task

pytestmark = pytest.mark.parity

CT_TASK_ID = 591
MR_TASK_ID = 592


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _save(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _case_ids(folder):
    return sorted(p[:-4] for p in os.listdir(folder) if p.endswith(".npz"))


@pytest.fixture(scope="module")
def v1_ct(tmp_path_factory, side_python):
    """v1's cropped folder for the synthetic CT task (intensity properties collected)."""
    base = tmp_path_factory.mktemp("v1_ct") / "base"
    task = make_task(base / "nnUNet_raw_data", kind="ct", task_id=CT_TASK_ID, seed=0)
    return harness.run_v1(base, task.name)


# ---------------------------------------------------------------------------------------------
# (a) identical output is accepted
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, task_id, intensity", [("ct", CT_TASK_ID, "always"), ("mr", MR_TASK_ID, "cli")])
def test_two_v1_runs_compare_identical(tmp_path, side_python, kind, task_id, intensity):
    bases = [tmp_path / "base1", tmp_path / "base2"]
    folders = []
    for base, processes in zip(bases, (1, 2)):
        task = make_task(base / "nnUNet_raw_data", kind=kind, task_id=task_id, seed=0)
        folders.append(harness.run_v1(base, task.name, intensity=intensity, processes=processes))
    info = harness.run_v1_info(bases[0], task.name)
    assert info["versions"]["numpy"].startswith("1.") and info["versions"]["nnunet"] == "1.7.1"
    assert info["collect_intensityproperties"] is (kind == "ct")
    assert os.path.isfile(folders[0] / "intensityproperties.pkl") is (kind == "ct")
    for name in ("dataset_properties.pkl", "props_per_case.pkl", "dataset.json"):
        assert os.path.isfile(folders[0] / name)

    # same content, paths mapped from one base to the other
    report = harness.compare_folders_report(folders[0], folders[1], path_map=(str(bases[0]), str(bases[1])))
    assert report == {"identical": True, "differences": [], "notes": [], "numpy": report["numpy"]}
    assert report["numpy"].startswith("1.")

    # verbatim paths: exactly the stored raw paths differ (one per modality plus the label, per case)
    diffs = harness.compare_folders(folders[0], folders[1])
    n_cases = len(_case_ids(folders[0]))
    n_mod = len(json.loads((folders[0] / "dataset.json").read_text())["modality"])
    assert len(diffs) == n_cases * (n_mod + 1), "\n".join(diffs)
    assert all(("['list_of_data_files'][" in d or "['seg_file']" in d) and str(bases[0]) in d for d in diffs)


def test_props_per_case_layout(v1_ct):
    """props_per_case.pkl as documented in run_v1.py (the file catalog must reproduce)."""
    ppc = _load(v1_ct / "props_per_case.pkl")
    assert type(ppc) is OrderedDict and list(ppc) == _case_ids(v1_ct)
    labels = json.loads((v1_ct / "dataset.json").read_text())["labels"]
    classes = [int(k) for k in labels if int(k) > 0]
    for props in ppc.values():
        assert type(props) is dict
        assert list(props) == ["has_classes", "only_one_region", "volume_per_class", "region_volume_per_class"]
        assert props["has_classes"].dtype == np.float32
        oor = props["only_one_region"]
        assert list(oor) == [tuple(classes)] + [(c,) for c in classes]
        assert all(type(c) is np.int64 for k in oor for c in k) and all(type(v) is bool for v in oor.values())
        for name in ("volume_per_class", "region_volume_per_class"):
            assert type(props[name]) is OrderedDict and list(props[name]) == classes
            assert all(type(k) is np.int64 for k in props[name])
        assert all(type(v) is np.float64 for v in props["volume_per_class"].values())
        for c, vols in props["region_volume_per_class"].items():
            assert type(vols) is list and all(type(v) is np.float64 for v in vols)
            assert np.isclose(sum(vols), props["volume_per_class"][c], rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------
# (b) every single mutation is reported
# ---------------------------------------------------------------------------------------------
def _dp(folder, fn):
    p = folder / "dataset_properties.pkl"
    dp = _load(p)
    dp = fn(dp)
    _save(dp, p)


def _pkl(folder, name, fn):
    p = folder / name
    obj = _load(p)
    obj = fn(obj)
    _save(obj, p)


def _set(d, key, value):
    d[key] = value
    return d


def _ip0(key, fn):
    """A mutation of intensityproperties.pkl[0][key]."""
    def f(ip):
        ip[0][key] = fn(ip[0][key])
        return ip
    return f


def m_roundtrip(folder, ids):
    """Control: re-pickle every pkl and re-save every npz unchanged, under the main env's numpy."""
    for name in os.listdir(folder):
        if name.endswith(".pkl"):
            _pkl(folder, name, lambda o: o)
        elif name.endswith(".npz"):
            with np.load(folder / name) as z:
                data = z["data"]
            np.savez_compressed(folder / name, data=data)
    return []


def m_float_size_reduction(folder, ids):
    def f(dp):
        v = dp["size_reductions"][ids[3]]
        dp["size_reductions"][ids[3]] = np.nextafter(v, np.inf)   # one ulp, still np.float64
        return dp
    _dp(folder, f)
    return ["dataset_properties.pkl['size_reductions'][%r]: v1 " % ids[3]]


def m_float_spacing_array(folder, ids):
    def f(dp):
        dp["all_spacings"][2] = dp["all_spacings"][2].copy()
        dp["all_spacings"][2][1] = np.nextafter(dp["all_spacings"][2][1], 0)
        return dp
    _dp(folder, f)
    return ["dataset_properties.pkl['all_spacings'][2]: 1 of 3 values differ; first at (1,)"]


def m_ordereddict_order(folder, ids):
    _dp(folder, lambda dp: _set(dp, "size_reductions", OrderedDict(reversed(list(dp["size_reductions"].items())))))
    return ["dataset_properties.pkl['size_reductions']: key order differs"]


def m_local_props_order(folder, ids):
    def f(ip):
        lp = ip[0]["local_props"]
        ip[0]["local_props"] = OrderedDict([(ids[1], lp[ids[1]]), (ids[0], lp[ids[0]])] + list(lp.items())[2:])
        return ip
    _pkl(folder, "intensityproperties.pkl", f)
    return ["intensityproperties.pkl[0]['local_props']: key order differs"]


def m_percentile_float32(folder, ids):
    def f(dp):
        ip = dp["intensityproperties"][0]
        ip["percentile_99_5"] = np.float32(ip["percentile_99_5"])
        return dp
    _dp(folder, f)
    return ["dataset_properties.pkl['intensityproperties'][0]['percentile_99_5']: type v1 np.float64 != ours np.float32"]


def m_float32_to_float(folder, ids):
    _pkl(folder, "intensityproperties.pkl", _ip0("mn", float))
    return ["intensityproperties.pkl[0]['mn']: type v1 np.float32 != ours float"]


def m_mean_within_tolerance(folder, ids):
    _pkl(folder, "intensityproperties.pkl", _ip0("mean", lambda v: np.nextafter(v, np.float32(np.inf))))
    return []  # accepted: 1 ulp of float32 is < rtol 1e-6 (reported as a note)


def m_mean_beyond_tolerance(folder, ids):
    _pkl(folder, "intensityproperties.pkl", _ip0("sd", lambda v: v * np.float32(1.00001)))
    return ["intensityproperties.pkl[0]['sd']: v1 "]


def m_median_no_tolerance(folder, ids):
    _pkl(folder, "intensityproperties.pkl", _ip0("median", lambda v: np.nextafter(v, np.float32(np.inf))))
    return ["intensityproperties.pkl[0]['median']: v1 "]


def m_nan_to_number(folder, ids):
    def f(ip):
        lp = ip[0]["local_props"]
        empty = [k for k, v in lp.items() if v["median"] != v["median"]]
        assert empty, "the synthetic CT task should have a case without foreground"
        lp[empty[0]]["median"] = 0.0
        return ip
    _pkl(folder, "intensityproperties.pkl", f)
    return ["intensityproperties.pkl[0]['local_props']["]


def m_npz_voxel(folder, ids):
    p = folder / (ids[2] + ".npz")
    with np.load(p) as z:
        data = z["data"].copy()
    data[0, data.shape[1] // 2, data.shape[2] // 2, data.shape[3] // 2] += 1
    np.savez_compressed(p, data=data)
    return ["%s.npz['data']: 1 of %d values differ" % (ids[2], data.size)]


def m_npz_dtype(folder, ids):
    p = folder / (ids[0] + ".npz")
    with np.load(p) as z:
        data = z["data"]
    np.savez_compressed(p, data=data.astype(np.float64))
    return ["%s.npz['data']: dtype v1 float32 != ours float64" % ids[0]]


def m_crop_bbox_tuple(folder, ids):
    _pkl(folder, ids[1] + ".pkl", lambda p: _set(p, "crop_bbox", tuple(p["crop_bbox"])))
    return ["%s.pkl['crop_bbox']: type v1 list != ours tuple" % ids[1]]


def m_dict_to_ordereddict(folder, ids):
    _dp(folder, OrderedDict)
    return ["dataset_properties.pkl: type v1 dict != ours OrderedDict"]


def m_modality_key_int64(folder, ids):
    _dp(folder, lambda dp: _set(dp, "modalities", {np.int64(k): v for k, v in dp["modalities"].items()}))
    return ["dataset_properties.pkl['modalities'][0]: key type v1 int != ours np.int64"]


def m_region_key_python_int(folder, ids):
    def f(ppc):
        oor = ppc[ids[0]]["only_one_region"]
        ppc[ids[0]]["only_one_region"] = OrderedDict((tuple(int(c) for c in k), v) for k, v in oor.items())
        return ppc
    _pkl(folder, "props_per_case.pkl", f)
    # one report per element of each tuple key
    return ["props_per_case.pkl[%r]['only_one_region'][" % ids[0]] * 6


def m_has_classes_dtype(folder, ids):
    def f(ppc):
        ppc[ids[4]]["has_classes"] = ppc[ids[4]]["has_classes"].astype(np.float64)
        return ppc
    _pkl(folder, "props_per_case.pkl", f)
    return ["props_per_case.pkl[%r]['has_classes']: dtype v1 float32 != ours float64" % ids[4]]


def m_seg_file_path(folder, ids):
    _pkl(folder, ids[5] + ".pkl", lambda p: _set(p, "seg_file", p["seg_file"].replace("labelsTr", "labelsTr/.")))
    return ["%s.pkl['seg_file']: v1 " % ids[5]]


def m_extra_file(folder, ids):
    (folder / "notes.txt").write_text("x")
    return ["<files>: only in ours: ['notes.txt']"]


def m_missing_case(folder, ids):
    os.remove(folder / (ids[6] + ".npz"))
    return ["<files>: only in v1: ['%s.npz']" % ids[6]]


def m_missing_gt_segmentation(folder, ids):
    os.remove(folder / "gt_segmentations" / (ids[0] + ".nii.gz"))
    return ["gt_segmentations/: listing differs"]


def m_dataset_json_reformatted(folder, ids):
    p = folder / "dataset.json"
    p.write_text(json.dumps(json.loads(p.read_text()), indent=2))
    return ["dataset.json: bytes differ, parsed JSON is identical"]


MUTATIONS = [m_roundtrip, m_float_size_reduction, m_float_spacing_array, m_ordereddict_order, m_local_props_order,
             m_percentile_float32, m_float32_to_float, m_mean_within_tolerance, m_mean_beyond_tolerance,
             m_median_no_tolerance, m_nan_to_number, m_npz_voxel, m_npz_dtype, m_crop_bbox_tuple,
             m_dict_to_ordereddict, m_modality_key_int64, m_region_key_python_int, m_has_classes_dtype,
             m_seg_file_path, m_extra_file, m_missing_case, m_missing_gt_segmentation, m_dataset_json_reformatted]


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__[2:])
def test_mutation_is_reported(v1_ct, tmp_path, mutate):
    ours = tmp_path / v1_ct.name
    shutil.copytree(v1_ct, ours)
    expected = mutate(ours, _case_ids(v1_ct))
    report = harness.compare_folders_report(v1_ct, ours)
    diffs = report["differences"]
    assert len(diffs) == len(expected), "expected %s, got:\n%s" % (expected, "\n".join(diffs))
    for d, e in zip(diffs, expected):
        assert d.startswith(e), "expected a report starting with %r, got %r" % (e, d)
    assert report["identical"] is (not expected)
    if mutate is m_mean_within_tolerance:
        assert len(report["notes"]) == 1 and "['mean']: float32 mean within rtol" in report["notes"][0]
    else:
        assert report["notes"] == []


# ---------------------------------------------------------------------------------------------
# (c) plans
# ---------------------------------------------------------------------------------------------
def test_plans_compare(v1_ct, tmp_path):
    task = v1_ct.name
    a = harness.run_planners(v1_ct, tmp_path / "a")
    b = harness.run_planners(v1_ct, tmp_path / "b")
    assert set(a["plans"]) == {"3d", "2d"} and a["plans"]["3d"]["normalization_schemes"] == {"0": "CT"}
    for k in ("3d", "2d"):
        assert harness.compare_plans(a["plans"][k]["plans_file"], b["plans"][k]["plans_file"]) == []
    # the planners worked on a copy: v1's cropped pkl files did not get use_nonzero_mask_for_norm
    assert "use_nonzero_mask_for_norm" not in _load(v1_ct / (_case_ids(v1_ct)[0] + ".pkl"))

    mutated = tmp_path / "mutated" / task
    shutil.copytree(v1_ct, mutated)
    sid = _case_ids(v1_ct)[0]
    _dp(mutated, lambda dp: _set(dp, "size_reductions", OrderedDict(
        (k, np.nextafter(v, 0) if k == sid else v) for k, v in dp["size_reductions"].items())))
    c = harness.run_planners(mutated, tmp_path / "c", task_name=task)
    for k in ("3d", "2d"):
        diffs = harness.compare_plans(a["plans"][k]["plans_file"], c["plans"][k]["plans_file"])
        assert diffs and all(d.startswith("<plans>['dataset_properties']['size_reductions'][%r]" % sid) for d in diffs), diffs
    diffs = harness.compare_plans(a["plans"]["3d"]["plans_file"], a["plans"]["2d"]["plans_file"])
    assert any(d.startswith("<plans>['data_identifier']") for d in diffs)
