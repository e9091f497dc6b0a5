"""catalog.synthetic: determinism, MSD layout, and that every advertised nnU-Net v1 situation is really
present in the written files (read back with SimpleITK, checked with numpy / scipy)."""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from catalog import synthetic as S

FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
NMOD = {"ct": 1, "mr": 2}
NCLS = {"ct": 3, "mr": 2}


# ----------------------------------------------------------------------------------------------
# fixtures / helpers
# ----------------------------------------------------------------------------------------------
class Case:
    def __init__(self, task: pathlib.Path, cid: str, nmod: int):
        self.id = cid
        self.itk = [sitk.ReadImage(str(task / "imagesTr" / f"{cid}_{c:04d}.nii.gz")) for c in range(nmod)]
        self.seg_itk = sitk.ReadImage(str(task / "labelsTr" / f"{cid}.nii.gz"))
        self.ims = [sitk.GetArrayFromImage(i) for i in self.itk]
        self.seg = sitk.GetArrayFromImage(self.seg_itk)
        # what nnU-Net v1 computes: union nonzero mask, 6-connected hole filling, half-open bbox
        self.nonzero = np.zeros(self.seg.shape, dtype=bool)
        for a in self.ims:
            self.nonzero |= a != 0
        self.filled = ndimage.binary_fill_holes(self.nonzero)
        w = np.argwhere(self.filled)
        self.bbox = [[int(lo), int(hi) + 1] for lo, hi in zip(w.min(0), w.max(0))]
        self.in_bbox = np.zeros(self.seg.shape, dtype=bool)
        self.in_bbox[tuple(slice(lo, hi) for lo, hi in self.bbox)] = True

    def ncomp(self, cls: int, structure=FULL) -> int:
        return ndimage.label(self.seg == cls, structure)[1]


def _load_task(task: pathlib.Path, kind: str) -> dict[str, Case]:
    return {cid: Case(task, cid, NMOD[kind]) for cid in S.case_ids(kind)}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    ct = S.make_task(root, "ct", task_id=501)
    mr = S.make_task(root, "mr", task_id=502)
    return {"ct": (ct, _load_task(ct, "ct")), "mr": (mr, _load_task(mr, "mr"))}


def _cases(tasks, kind, situation):
    _, cases = tasks[kind]
    ids = S.situation_cases(kind, situation)
    assert ids, (kind, situation)
    return [cases[i] for i in ids]


def _files(d: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# determinism and layout
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ct", "mr"])
def test_deterministic_byte_identical(tmp_path, kind):
    a = S.make_task(tmp_path, kind, seed=3)
    fa = _files(a)
    assert len(fa) == 2 + (NMOD[kind] + 1) * S.DEFAULT_N_CASES[kind] + NMOD[kind] - 1
    # a second call (into the same, existing folder: it is replaced) gives byte-identical files
    b = S.make_task(tmp_path, kind, seed=3)
    assert b == a
    fb = _files(b)
    assert list(fa) == list(fb)
    for k in fa:
        assert fa[k] == fb[k], k
    # another seed gives other images
    d = S.make_task(tmp_path / "other", kind, seed=4, n_cases=1)
    cid = S.case_ids(kind)[0]
    assert _files(d)[f"imagesTr/{cid}_0000.nii.gz"] != fa[f"imagesTr/{cid}_0000.nii.gz"]


def test_name_and_task_id(tmp_path):
    d = S.make_task(tmp_path, "ct", task_id=7, name="Foo", n_cases=1)
    assert d == tmp_path / "Task007_Foo"
    assert json.loads((d / "dataset.json").read_text())["name"] == "Foo"
    assert S.make_task(tmp_path, "mr", n_cases=1).name == "Task501_SynthMR"
    with pytest.raises(ValueError):
        S.make_task(tmp_path, "pet")


@pytest.mark.parametrize("kind", ["ct", "mr"])
def test_layout_and_dataset_json(tasks, kind):
    task, cases = tasks[kind]
    dj = json.loads((task / "dataset.json").read_text())
    for key in ("name", "description", "tensorImageSize", "modality", "labels", "numTraining", "numTest",
                "training", "test"):
        assert key in dj, key
    assert dj["tensorImageSize"] == "3D"
    assert dj["modality"] == ({"0": "CT"} if kind == "ct" else {"0": "FLAIR", "1": "T1w"})
    labels = dj["labels"]
    assert list(labels) == [str(i) for i in range(NCLS[kind] + 1)] and labels["0"] == "background"
    ids = S.case_ids(kind)
    assert len(ids) == S.DEFAULT_N_CASES[kind] == dj["numTraining"] == len(dj["training"])
    listed = []
    for e in dj["training"]:
        assert set(e) == {"image", "label"}
        cid = e["image"][len("./imagesTr/"):-len(".nii.gz")]
        assert e["image"] == f"./imagesTr/{cid}.nii.gz" and e["label"] == f"./labelsTr/{cid}.nii.gz"
        listed.append(cid)
    assert sorted(listed) == sorted(ids)
    # shuffled: neither generation order nor code-point order
    assert listed != ids and listed != sorted(ids)
    # files: exactly the expected ones
    expect_tr = {f"{i}_{c:04d}.nii.gz" for i in ids for c in range(NMOD[kind])}
    assert {p.name for p in (task / "imagesTr").iterdir()} == expect_tr
    assert {p.name for p in (task / "labelsTr").iterdir()} == {f"{i}.nii.gz" for i in ids}
    assert dj["numTest"] == len(dj["test"]) == 1
    tid = dj["test"][0][len("./imagesTs/"):-len(".nii.gz")]
    assert dj["test"][0] == f"./imagesTs/{tid}.nii.gz" and tid not in ids
    assert {p.name for p in (task / "imagesTs").iterdir()} == {f"{tid}_{c:04d}.nii.gz" for c in range(NMOD[kind])}
    # pixel types, geometry consistency, declared labels
    want = sitk.sitkInt16 if kind == "ct" else sitk.sitkFloat32
    for case in cases.values():
        for im in case.itk:
            assert im.GetPixelID() == want
            assert im.GetSize() == case.seg_itk.GetSize()
            assert np.allclose(im.GetSpacing(), case.seg_itk.GetSpacing())
            assert np.allclose(im.GetOrigin(), case.seg_itk.GetOrigin())
            assert np.allclose(im.GetDirection(), case.seg_itk.GetDirection())
        assert case.seg_itk.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(case.seg).tolist()) <= set(range(NCLS[kind] + 1))


def test_mr_ids_codepoint_order_differs_from_natural():
    ids = S.case_ids("mr")
    assert ids == ["mr_1", "mr_2", "mr_3", "mr_10", "mr_11", "mr_20"]
    natural = sorted(ids, key=lambda s: int(s.split("_")[1]))
    assert sorted(ids) != natural
    assert sorted(ids) == ["mr_1", "mr_10", "mr_11", "mr_2", "mr_20", "mr_3"]
    more = S.case_ids("mr", 14)
    assert len(set(more)) == 14 and more[:6] == ids
    assert S.case_ids("ct") == ["ct_%03d" % i for i in range(8)]


@pytest.mark.parametrize("kind", ["ct", "mr"])
def test_shapes_small_and_distinct(tasks, kind):
    _, cases = tasks[kind]
    shapes = [c.seg.shape for c in cases.values()]
    assert len(set(shapes)) == len(shapes)
    for nz, ny, nx in shapes:
        assert 24 <= nz <= 48 and 48 <= ny <= 80 and 48 <= nx <= 80


def test_shape_scale(tmp_path):
    base = S.make_task(tmp_path / "a", "ct", n_cases=2)
    half = S.make_task(tmp_path / "b", "ct", n_cases=2, shape_scale=0.5)
    for cid in S.case_ids("ct", 2):
        s1 = sitk.ReadImage(str(base / "labelsTr" / f"{cid}.nii.gz")).GetSize()
        s2 = sitk.ReadImage(str(half / "labelsTr" / f"{cid}.nii.gz")).GetSize()
        for a, b in zip(s1, s2):
            assert b == max(round(a * 0.5), b) and b < a


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------
def _direction_kind(d):
    m = np.array(d).reshape(3, 3)
    if np.allclose(m, np.eye(3), atol=1e-6):
        return "identity"
    if np.allclose(m, np.diag([-1, -1, 1]), atol=1e-6):
        return "flipped"
    ang = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    assert np.allclose(m[2], [0, 0, 1], atol=1e-6) and np.allclose(m[:, 2], [0, 0, 1], atol=1e-6)
    assert 5 - 1e-3 <= abs(ang) <= 15 + 1e-3, ang
    return "oblique"


@pytest.mark.parametrize("kind", ["ct", "mr"])
def test_geometry_anisotropic_origins_directions(tasks, kind):
    _, cases = tasks[kind]
    for c in cases.values():
        sx, sy, sz = c.itk[0].GetSpacing()
        assert sz >= 2.4 * max(sx, sy)
        assert 0.55 <= sx <= 1.1 and 0.55 <= sy <= 1.1 and 2.4 <= sz <= 5.0
        assert all(abs(v) > 1 for v in c.itk[0].GetOrigin())
    for name in ("identity", "flipped", "oblique"):
        for c in _cases(tasks, kind, f"{name}_direction"):
            assert _direction_kind(c.itk[0].GetDirection()) == name, c.id


# ----------------------------------------------------------------------------------------------
# nonzero mask / bbox situations
# ----------------------------------------------------------------------------------------------
def _pad_widths(img: np.ndarray):
    w = np.argwhere(img != 0)
    lo, hi = w.min(0), w.max(0)
    return [(int(lo[a]), int(img.shape[a] - 1 - hi[a])) for a in range(3)]


def test_ct_zero_padding_every_side(tasks):
    _, cases = tasks["ct"]
    border = set(S.situation_cases("ct", "border_slice_zeros"))
    widths = []
    for c in cases.values():
        main = ndimage.label(c.nonzero, FULL)[0]
        biggest = np.argmax(np.bincount(main.ravel())[1:]) + 1
        pw = _pad_widths(np.where(main == biggest, 1, 0))
        widths.append(tuple(pw))
        for axis, (a, b) in enumerate(pw):
            if axis == 0 and c.id in border:
                assert a == 0 and b == 0
            else:
                assert a >= 1 and b >= 1, (c.id, pw)
        # the air inside the FOV is nonzero: v1's crop removes exactly the padding
        assert c.nonzero.sum() < c.nonzero.size
    assert len(set(widths)) > 1


def test_mr_zero_margins(tasks):
    _, cases = tasks["mr"]
    border = set(S.situation_cases("mr", "border_slice_zeros"))
    for c in cases.values():
        pw = _pad_widths(c.nonzero.astype(np.uint8))
        if c.id in border:
            assert pw[0] == (0, 0)
        else:
            assert all(a >= 1 and b >= 1 for a, b in pw), (c.id, pw)
        assert all(a >= 1 and b >= 1 for a, b in pw[1:])


def test_circular_fov_corners_become_minus_one(tasks):
    _, cases = tasks["ct"]
    circ = {c.id for c in _cases(tasks, "ct", "circular_fov")}
    speck = set(S.situation_cases("ct", "stray_speck"))
    for c in cases.values():
        (z0, z1), (y0, y1), (x0, x1) = c.bbox
        zm = (z0 + z1) // 2
        corners = [c.filled[zm, y, x] for y in (y0, y1 - 1) for x in (x0, x1 - 1)]
        minus1 = ((c.seg == 0) & ~c.filled & c.in_bbox).sum()
        if c.id in circ:
            assert not any(corners), c.id
            assert minus1 > 100, c.id
        elif c.id not in speck:
            assert all(corners), c.id  # rectangular FOV of nonzero air
            assert minus1 < 50, c.id  # only zeros on the first/last FOV slice touching the padding


def test_enclosed_zeros_are_holes(tasks):
    for kind in ("ct", "mr"):
        _, cases = tasks[kind]
        with_region = S.situation_cases(kind, "enclosed_zero_region")
        if kind == "ct":
            assert with_region == list(cases)  # every CT case has an exactly-0 cyst core
        for cid in with_region:
            c = cases[cid]
            holes = c.filled & ~c.nonzero
            assert holes.any(), cid
            # a multi-voxel enclosed region of exact zeros (cyst core / ventricle)
            lab, n = ndimage.label(holes)
            assert np.bincount(lab.ravel())[1:].max() >= 9, cid
            assert all(a[holes].max() == 0 for a in c.ims)


def test_border_slice_zeros_not_filled(tasks):
    for kind in ("ct", "mr"):
        for c in _cases(tasks, kind, "border_slice_zeros"):
            for zz in (0, -1):
                # zero voxels enclosed in-plane by nonzero tissue on the first / last slice ...
                enclosed_2d = ndimage.binary_fill_holes(c.nonzero[zz]) & ~c.nonzero[zz]
                assert enclosed_2d.sum() >= 9, (c.id, zz)
                # ... touch the array border, so v1's 3D hole filling leaves them outside the mask
                assert not c.filled[zz][enclosed_2d].any(), (c.id, zz)


def test_stray_speck_grows_bbox(tasks):
    (c,) = _cases(tasks, "ct", "stray_speck")
    lab, n = ndimage.label(c.nonzero, FULL)
    sizes = np.bincount(lab.ravel())[1:]
    assert n >= 2 and sizes.min() <= 8
    big = np.argmax(sizes) + 1
    w = np.argwhere(lab == big)
    main_box = [[int(lo), int(hi) + 1] for lo, hi in zip(w.min(0), w.max(0))]
    assert main_box != c.bbox
    assert c.bbox[1][0] < main_box[1][0] - 2 and c.bbox[2][0] < main_box[2][0] - 2
    # the stray speck makes bbox voxels outside the mask (-> seg -1)
    assert ((c.seg == 0) & ~c.filled & c.in_bbox).sum() > 100
    for other in tasks["ct"][1].values():
        if other.id != c.id and other.id not in S.situation_cases("ct", "circular_fov"):
            assert ndimage.label(other.nonzero, FULL)[1] == 1, other.id


def test_label_spills_outside_bbox(tasks):
    spill = {c.id for c in _cases(tasks, "ct", "label_spills_outside_bbox")}
    for kind in ("ct", "mr"):
        for c in tasks[kind][1].values():
            n = ((c.seg > 0) & ~c.in_bbox).sum()
            if c.id in spill:
                assert n > 0 and ((c.seg > 0) & c.in_bbox).sum() > 0
                assert (c.ims[0][(c.seg > 0) & ~c.in_bbox] == 0).all()
            else:
                assert n == 0, c.id


def test_labelled_voxels_outside_mask_inside_bbox(tasks):
    expected = {c.id for c in _cases(tasks, "ct", "label_outside_mask_inside_bbox")}
    for kind in ("ct", "mr"):
        for c in tasks[kind][1].values():
            sel = (c.seg > 0) & ~c.filled & c.in_bbox
            if c.id in expected:
                assert sel.sum() >= 8
                assert all((a[sel] == 0).all() for a in c.ims)
            else:
                assert not sel.any(), c.id


# ----------------------------------------------------------------------------------------------
# label situations
# ----------------------------------------------------------------------------------------------
def test_multi_piece_class(tasks):
    for kind in ("ct", "mr"):
        for c in _cases(tasks, kind, "multi_piece_class"):
            assert max(c.ncomp(k) for k in range(1, NCLS[kind] + 1)) >= 2, c.id
    (c5,) = [c for c in _cases(tasks, "ct", "multi_piece_class") if c.id == "ct_005"]
    assert c5.ncomp(2) >= 3


def test_corner_touching_blobs(tasks):
    for kind in ("ct", "mr"):
        (c,) = _cases(tasks, kind, "corner_touching")
        assert c.ncomp(2, FULL) == 1, c.id
        assert c.ncomp(2, ndimage.generate_binary_structure(3, 1)) == 2, c.id
        assert c.ncomp(2, ndimage.generate_binary_structure(3, 2)) == 2, c.id  # corner only, not edge


def test_class_absent_and_empty_case(tasks):
    for kind in ("ct", "mr"):
        cases = tasks[kind][1]
        present = {cid: set(np.unique(c.seg).tolist()) - {0} for cid, c in cases.items()}
        declared = set(range(1, NCLS[kind] + 1))
        # every declared class occurs somewhere, and some case lacks a declared class
        assert set().union(*present.values()) == declared
        absent = S.situation_cases(kind, "class_absent")
        for cid in absent:
            assert present[cid] and present[cid] != declared, cid
    (empty,) = _cases(tasks, "ct", "no_foreground")
    assert not (empty.seg > 0).any() and empty.nonzero.any()
    assert all((c.seg > 0).any() for cid, c in tasks["ct"][1].items() if cid != empty.id)
    assert all((c.seg > 0).any() for c in tasks["mr"][1].values())


def test_mr_mask_is_union_over_channels(tasks):
    for c in tasks["mr"][1].values():
        m0, m1 = c.ims[0] != 0, c.ims[1] != 0
        assert (m1 & ~m0).sum() > 100, c.id  # modality 1 reaches further
        assert not (m0 & ~m1).any(), c.id
        assert c.filled.sum() > ndimage.binary_fill_holes(m0).sum()


# ----------------------------------------------------------------------------------------------
# benchmark tasks (quick versions)
# ----------------------------------------------------------------------------------------------
def test_benchmark_mr_one_case(tmp_path):
    d = S.make_benchmark_task(tmp_path, "mr", n_cases=1)
    assert d.name == "Task601_BenchMR"
    dj = json.loads((d / "dataset.json").read_text())
    assert dj["numTraining"] == 1 and len(dj["modality"]) == 4 and list(dj["labels"]) == ["0", "1", "2", "3"]
    cid = dj["training"][0]["image"][len("./imagesTr/"):-len(".nii.gz")]
    mask = None
    for c in range(4):
        im = sitk.ReadImage(str(d / "imagesTr" / f"{cid}_{c:04d}.nii.gz"))
        assert im.GetSize() == (240, 240, 155) and im.GetPixelID() == sitk.sitkFloat32
        a = sitk.GetArrayFromImage(im)
        mask = (a != 0) if mask is None else mask
        assert ((a != 0) == mask).all()  # skull-stripped: same brain mask in every channel
    seg = sitk.ReadImage(str(d / "labelsTr" / f"{cid}.nii.gz"))
    assert seg.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) == {0, 1, 2, 3}
    assert 0.1 < mask.mean() < 0.6


def test_benchmark_ct_case_content():
    # the generator only (writing a 512x512 volume would dominate the test time)
    img, seg, spacing, origin, direction = S._bench_ct_case(0, 0)
    assert img.dtype == np.int16 and seg.dtype == np.uint8
    nz, ny, nx = img.shape
    assert (ny, nx) == (512, 512) and 100 <= nz <= 250
    assert img[:, 0, 0].max() == 0 and img[:, 256, 256].min() != 0  # circular FOV
    assert img.min() >= -1100 and img.max() > 500  # air ... bone
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 3}
    m = seg == 2
    sl = ndimage.find_objects(m.astype(np.uint8))[0]
    assert ndimage.label(m[sl], FULL)[1] >= 12  # dozens of small lesions
