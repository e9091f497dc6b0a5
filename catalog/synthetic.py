"""Deterministic synthetic MSD / nnU-Net v1 raw tasks (fixtures for parity tests and benchmarks).

Conventions
-----------
* Arrays are built in numpy **(z, y, x)** order (what ``SimpleITK.GetArrayFromImage`` returns);
  geometry (spacing, origin, direction) is set in ITK **(x, y, z)** order, direction row-major 3x3.
* Everything is a function of the arguments: every case draws from its own
  ``np.random.default_rng(SeedSequence([seed, kind_code, case_index]))``; the task-level choices
  (shape offsets, dataset.json order) from ``SeedSequence([seed, kind_code, 1_000_000])``. No clock,
  no unseeded randomness, gzip headers carry no mtime -> byte-identical files for identical arguments.
* Content depends on ``kind``, ``seed``, ``shape_scale`` and the case index only (not on ``task_id`` or
  ``name``); ``n_cases`` only decides how many cases are written. Situations are tied to case indices,
  so asking for fewer cases than the default drops the situations of the missing indices.

``make_task`` (small, a few MB, fast; ``<parent>/Task{task_id:03d}_{name}/``)
-----------------------------------------------------------------------------
kind="ct": ``{"0": "CT"}``, int16, labels 1 organ, 2 tumour, 3 vessel, default 8 cases
``ct_000 .. ct_007``; body ellipse (soft tissue + fat ring) in air (-1000 HU), 0 outside the FOV.

============  =================================================================================
case (idx)    situation carried (in addition to the ones every case has)
============  =================================================================================
every case    anisotropic spacing (0.6-0.95 mm in-plane, 2.5-5 mm slices), non-zero origin, a
              distinct shape, exactly-0 enclosed "cyst" core inside the organ plus scattered HU
              rounding zeros inside the body (filled as holes); zero padding of random width on
              all six sides (except ct_005's z sides)
direction     idx % 3 == 0 identity, 1 flipped (-1,-1,1), 2 oblique (rotation about z, 5-15 deg)
ct_001        class 3 (vessel) runs along the FOV's x-start edge and spills into the zero padding
              -> those label voxels lie outside the bbox and are cropped away; class 2 in 2 pieces
ct_002        circular reconstruction FOV (bbox corners outside the mask -> seg -1) and a 2x2x2
              class-3 patch in a bbox corner outside the mask (labelled voxels with intensity 0;
              class 3 therefore in 2 pieces)
ct_003        stray 2x2x2 nonzero speck far out in the zero padding (grows the bbox);
              class 2 in 2 pieces
ct_004        class 3 absent; class 2 = two cubes touching only at one corner
              (1 component under 26-connectivity, 2 under 6)
ct_005        no z padding: body reaches the first/last slice, with 3x3 exact-zero patches on the
              first and last slice inside the body (touch the array border -> NOT filled);
              class 2 in 3 pieces
ct_006        circular reconstruction FOV
ct_007        label has no foreground at all (image still has organ/cyst)
============  =================================================================================

kind="mr": ``{"0": "FLAIR", "1": "T1w"}``, float32, labels 1 edema, 2 tumour core, default 6 cases
with ids ``mr_1, mr_2, mr_3, mr_10, mr_11, mr_20`` (then 100, 4, 12, 5, ...), so code-point order
(mr_1 < mr_10 < mr_11 < mr_2 < mr_20 < mr_3) differs from natural order. Skull-stripped-like: exact
zeros outside the brain ellipsoid (random margins). In **every** MR case modality 1's nonzero region
is larger than (and contains) modality 0's, so the nonzero mask is the union over channels.

============  =================================================================================
case (idx)    situation
============  =================================================================================
direction     idx % 3 == 0 flipped (-1,-1,1), 1 identity, 2 oblique
idx even      "ventricle": enclosed region exactly 0 in both modalities (filled as a hole)
idx % 3 == 1  class 2 in 2 disconnected pieces (mr_2, mr_11)
mr_3  (2)     class 2 = two cubes touching only at one corner (1 comp. 26-conn, 2 comp. 6-conn)
mr_10 (3)     class 2 absent
mr_20 (5)     brain cut by the first/last slice, 3x3 exact-zero patch (both channels) on the first
              and last slice inside the brain (touch the border -> NOT filled)
============  =================================================================================

Both kinds: dataset.json ``training`` is in a shuffled order (never the generation order and never
code-point order); one test case in ``imagesTs`` (all modalities).

``make_benchmark_task`` (realistic sizes; ``Task{task_id:03d}_BenchCT`` / ``_BenchMR``)
-----------------------------------------------------------------------------------------
kind="ct": default 12 cases ``bct_0 .. bct_11`` of 512x512x(100-250) int16: body ellipse with
fat / muscle / visceral fat / spine (with discs) / lungs in the upper part, HU noise, 0 outside a
circular FOV; labels 1 organ (liver-like), 2 lesions (dozens of small blobs), 3 vessels (aorta, IVC,
branching intra-organ vessels). kind="mr": default 4 cases ``bmr_000 ..`` of 4 channels
(FLAIR, T1w, t1gd, T2w) 240x240x155 float32 (integer valued), brain with folded cortex, ventricles,
exact zeros outside; labels 1 edema, 2 non-enhancing tumour, 3 enhancing tumour. Blobs are drawn
in small sub-boxes; the big volumes are built in z-chunks.
"""
from __future__ import annotations

import json
import pathlib
import shutil
from statistics import NormalDist

import numpy as np
import SimpleITK as sitk

__all__ = [
    "make_task",
    "make_benchmark_task",
    "case_ids",
    "situation_cases",
    "SITUATIONS",
    "DEFAULT_N_CASES",
]

_CT_CODE = 501
_MR_CODE = 502
_BENCH_CT_CODE = 601
_BENCH_MR_CODE = 602
_TASK_LEVEL = 1_000_000

DEFAULT_N_CASES = {"ct": 8, "mr": 6}
_BENCH_DEFAULT_N_CASES = {"ct": 12, "mr": 4}

_MR_NUMBERS = [1, 2, 3, 10, 11, 20, 100, 4, 12, 5]

# situation -> case indices (see the module docstring); case_ids() turns indices into identifiers
SITUATIONS: dict[str, dict[str, list[int]]] = {
    "ct": {
        "label_spills_outside_bbox": [1],
        "circular_fov": [2, 6],
        "label_outside_mask_inside_bbox": [2],
        "stray_speck": [3],
        "class_absent": [4],
        "corner_touching": [4],
        "border_slice_zeros": [5],
        "multi_piece_class": [1, 2, 3, 5],
        "no_foreground": [7],
        "enclosed_zero_region": [0, 1, 2, 3, 4, 5, 6, 7],
        "identity_direction": [0, 3, 6],
        "flipped_direction": [1, 4, 7],
        "oblique_direction": [2, 5],
    },
    "mr": {
        "enclosed_zero_region": [0, 2, 4],
        "multi_piece_class": [1, 4],
        "corner_touching": [2],
        "class_absent": [3],
        "border_slice_zeros": [5],
        "flipped_direction": [0, 3],
        "identity_direction": [1, 4],
        "oblique_direction": [2, 5],
    },
}


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def _check_kind(kind: str) -> str:
    k = str(kind).lower()
    if k not in ("ct", "mr"):
        raise ValueError(f"kind must be 'ct' or 'mr', not {kind!r}")
    return k


def case_ids(kind: str = "ct", n_cases: int | None = None) -> list[str]:
    """Training case identifiers of ``make_task(kind, n_cases=...)`` in generation (index) order."""
    kind = _check_kind(kind)
    n = DEFAULT_N_CASES[kind] if n_cases is None else int(n_cases)
    if kind == "ct":
        return ["ct_%03d" % i for i in range(n)]
    nums = list(_MR_NUMBERS[:n])
    k = 6
    while len(nums) < n:
        if k not in _MR_NUMBERS:
            nums.append(k)
        k += 1
    return ["mr_%d" % v for v in nums]


def situation_cases(kind: str, situation: str, n_cases: int | None = None) -> list[str]:
    """Identifiers of the cases of ``make_task(kind, n_cases=...)`` that carry ``situation``."""
    kind = _check_kind(kind)
    ids = case_ids(kind, n_cases)
    return [ids[i] for i in SITUATIONS[kind][situation] if i < len(ids)]


def _rng(seed: int, code: int, idx: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(code), int(idx)]))


def _direction(which: str, rng: np.random.Generator) -> tuple[float, ...]:
    if which == "identity":
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    if which == "flip":
        return (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    a = np.deg2rad(rng.uniform(5.0, 15.0)) * (1 if rng.random() < 0.5 else -1)
    c, s = float(np.cos(a)), float(np.sin(a))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def _write(arr: np.ndarray, spacing, origin, direction, path: pathlib.Path) -> None:
    img = sitk.GetImageFromArray(arr)  # numpy (z, y, x) -> ITK (x, y, z)
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection([float(v) for v in direction])
    sitk.WriteImage(img, str(path), True)


def _grid(shape_zyx, spacing_xyz):
    """Broadcastable physical index coordinates (mm from voxel 0): x (1,1,nx), y (1,ny,1), z (nz,1,1)."""
    nz, ny, nx = shape_zyx
    sx, sy, sz = spacing_xyz
    return ((np.arange(nx) * sx)[None, None, :], (np.arange(ny) * sy)[None, :, None],
            (np.arange(nz) * sz)[:, None, None])


def _ellipsoid(grid, center_xyz, radii_xyz) -> np.ndarray:
    x, y, z = grid
    cx, cy, cz = center_xyz
    rx, ry, rz = radii_xyz
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0


def _prepare(parent, folder: str) -> pathlib.Path:
    d = pathlib.Path(parent) / folder
    if d.exists():
        shutil.rmtree(d)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (d / sub).mkdir(parents=True)
    return d


def _shuffled(ids: list[str], rng: np.random.Generator) -> list[str]:
    order = [ids[i] for i in rng.permutation(len(ids))]
    if len(ids) > 1 and (order == ids or order == sorted(ids)):
        order = order[1:] + order[:1]
        if order == sorted(ids) or order == ids:
            order = order[::-1]
    return order


def _write_dataset_json(d: pathlib.Path, name, description, modality, labels, train_ids, test_ids,
                        rng) -> None:
    order = _shuffled(list(train_ids), rng)
    dj = {
        "name": name,
        "description": description,
        "reference": "synthetic (catalog.synthetic)",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": modality,
        "labels": labels,
        "numTraining": len(order),
        "numTest": len(test_ids),
        "training": [{"image": "./imagesTr/%s.nii.gz" % i, "label": "./labelsTr/%s.nii.gz" % i}
                     for i in order],
        "test": ["./imagesTs/%s.nii.gz" % i for i in test_ids],
    }
    (d / "dataset.json").write_text(json.dumps(dj, indent=4) + "\n")


def _scaled(n: int, scale: float, minimum: int) -> int:
    return max(minimum, int(round(n * scale)))


def _pad(w: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, int(round(w * scale)))


# ----------------------------------------------------------------------------------------------
# small CT case
# ----------------------------------------------------------------------------------------------
def _ct_case(seed: int, idx: int, scale: float, offs, empty_idx: int = 7):
    rng = _rng(seed, _CT_CODE, idx)
    nz = _scaled(24 + (7 * idx + offs[0]) % 25, scale, 12)
    ny = _scaled(48 + (13 * idx + offs[1]) % 33, scale, 32)
    nx = _scaled(48 + (19 * idx + offs[2]) % 33, scale, 32)
    shape = (nz, ny, nx)
    sxy = float(np.round(rng.uniform(0.6, 0.95), 4))
    sz = float(rng.choice([2.5, 3.0, 4.0, 5.0]))
    spacing = (sxy, sxy, sz)
    origin = (float(np.round(rng.uniform(-250, -150), 3)), float(np.round(rng.uniform(-260, -160), 3)),
              float(np.round(rng.uniform(-900, -100), 3)))
    direction = _direction(("identity", "flip", "oblique")[idx % 3], rng)
    g = _grid(shape, spacing)
    x, y, _ = g

    # zero padding (voxels) per side: ((z0, z1), (y0, y1), (x0, x1))
    pz = [_pad(int(rng.integers(1, 4)), scale), _pad(int(rng.integers(1, 4)), scale)]
    py = [_pad(int(rng.integers(2, 9)), scale), _pad(int(rng.integers(2, 9)), scale)]
    px = [_pad(int(rng.integers(2, 9)), scale), _pad(int(rng.integers(2, 9)), scale)]
    if idx == 5:
        pz = [0, 0]
    if idx == 3:  # room for a speck far out in the padding
        py[0], px[0] = max(py[0], 7), max(px[0], 7)
    if idx == 1:  # room for the spilling vessel
        px[0] = max(px[0], 5)
    fov = np.zeros(shape, dtype=bool)
    fov[pz[0]:nz - pz[1], py[0]:ny - py[1], px[0]:nx - px[1]] = True
    # FOV box in mm (voxel centres)
    fx0, fx1 = px[0] * sxy, (nx - px[1] - 1) * sxy
    fy0, fy1 = py[0] * sxy, (ny - py[1] - 1) * sxy
    fz0, fz1 = pz[0] * sz, (nz - pz[1] - 1) * sz
    fcx, fcy, fcz = (fx0 + fx1) / 2, (fy0 + fy1) / 2, (fz0 + fz1) / 2
    hwx, hwy, hz = (fx1 - fx0) / 2, (fy1 - fy0) / 2, (fz1 - fz0) / 2 + 0.5 * sz

    circular = idx % 4 == 2
    brx, bry = 0.80 * hwx, 0.66 * hwy
    if circular:  # circular reconstruction FOV inscribed in the box
        rad = 0.98 * min(hwx, hwy)
        fov &= ((x - fcx) ** 2 + (y - fcy) ** 2) <= rad ** 2
        brx, bry = min(brx, 0.9 * rad), min(bry, 0.9 * rad)

    img = rng.normal(-1000.0, 8.0, size=shape)  # air inside the FOV
    bcx = fcx + rng.uniform(-0.04, 0.04) * hwx
    bcy = fcy + rng.uniform(-0.04, 0.04) * hwy
    body2d = ((x - bcx) / brx) ** 2 + ((y - bcy) / bry) ** 2  # body spans every slice
    body = np.broadcast_to(body2d <= 1.0, shape)
    fat = np.broadcast_to((body2d <= 1.0) & (body2d > 0.8 ** 2), shape)
    img[body] = rng.normal(40.0, 18.0, size=int(body.sum()))
    img[fat] = rng.normal(-100.0, 15.0, size=int(fat.sum()))

    # organ (class 1)
    oc = (bcx + rng.uniform(-0.1, 0.1) * brx, bcy + rng.uniform(-0.08, 0.08) * bry,
          fcz + rng.uniform(-0.1, 0.1) * hz)
    orr = (rng.uniform(0.40, 0.5) * brx, rng.uniform(0.40, 0.5) * bry,
           max(rng.uniform(0.3, 0.45) * hz, 2.0 * sz))
    organ = _ellipsoid(g, oc, orr)
    # cyst: water-like (0 +- 2 HU, rounding gives exact zeros) with an exactly-0 core; unlabelled
    cyc = (oc[0] - 0.45 * orr[0], oc[1], oc[2])
    cyst = _ellipsoid(g, cyc, (0.3 * orr[0], 0.3 * orr[1], max(0.3 * orr[2], 1.2 * sz)))
    core = _ellipsoid(g, cyc, (0.15 * orr[0], 0.15 * orr[1], max(0.15 * orr[2], 0.6 * sz)))
    ccz, ccy, ccx = int(round(cyc[2] / sz)), int(round(cyc[1] / sxy)), int(round(cyc[0] / sxy))
    core[ccz, ccy - 1:ccy + 2, ccx - 1:ccx + 2] = True

    # class 2 tumour(s) inside the organ
    l1c = (oc[0] + 0.35 * orr[0], oc[1] - 0.25 * orr[1], oc[2])
    les = _ellipsoid(g, l1c, (rng.uniform(0.2, 0.28) * orr[0], rng.uniform(0.2, 0.28) * orr[1],
                              max(rng.uniform(0.25, 0.35) * orr[2], 1.2 * sz))) & organ
    if idx % 2 == 1:  # second, disconnected piece
        les |= _ellipsoid(g, (oc[0] - 0.1 * orr[0], oc[1] + 0.55 * orr[1], oc[2] + 0.3 * orr[2]),
                          (0.15 * orr[0], 0.15 * orr[1], max(0.15 * orr[2], 1.0 * sz))) & organ
    if idx == 5:  # third piece
        les |= _ellipsoid(g, (oc[0] + 0.35 * orr[0], oc[1] + 0.45 * orr[1], oc[2] - 0.3 * orr[2]),
                          (0.12 * orr[0], 0.12 * orr[1], max(0.12 * orr[2], 1.0 * sz))) & organ
    if idx == 4:  # two cubes touching only at one corner
        les = np.zeros(shape, dtype=bool)
        cz, cy, cx = int(round(l1c[2] / sz)), int(round(l1c[1] / sxy)), int(round(l1c[0] / sxy))
        les[cz - 2:cz, cy - 3:cy, cx - 3:cx] = True
        les[cz:cz + 2, cy:cy + 3, cx:cx + 3] = True

    # class 3 vessel: a tube along z beside the organ (absent in case 4; spills in case 1)
    vessel = np.zeros(shape, dtype=bool)
    if idx != 4:
        rv = max(0.08 * brx, 2.2 * sxy)
        vx = fx0 if idx == 1 else bcx + 0.72 * brx
        vessel = _ellipsoid(g, (vx, oc[1], oc[2]), (rv, rv, 0.6 * hz))

    seg = np.zeros(shape, dtype=np.uint8)
    img[organ] = rng.normal(60.0, 12.0, size=int(organ.sum()))
    img[cyst] = rng.normal(0.0, 2.0, size=int(cyst.sum()))
    img[core] = 0.0
    img[les] = rng.normal(20.0, 15.0, size=int(les.sum()))
    img[vessel] = rng.normal(180.0, 25.0, size=int(vessel.sum()))
    if idx != empty_idx:
        seg[organ] = 1
        seg[cyst] = 0
        seg[les] = 2
        seg[vessel] = 3

    img = np.round(img)
    img[~fov] = 0
    if circular and idx == 2:
        # labelled patch in a bbox corner outside the circular FOV: keeps its label, intensity 0
        zs, ys, xs = np.nonzero(fov)
        zc, y0, x0 = (int(zs.min()) + int(zs.max())) // 2, int(ys.min()), int(xs.min())
        assert not fov[zc:zc + 2, y0:y0 + 2, x0:x0 + 2].any()
        seg[zc:zc + 2, y0:y0 + 2, x0:x0 + 2] = 3
    if idx == 3:  # stray nonzero speck far out in the zero padding
        zc = nz // 2
        img[zc:zc + 2, 1:3, 1:3] = 50
    if idx == 5:  # exact zeros on the first / last slice inside the body (not holes)
        cy, cx = int(round(bcy / sxy)), int(round(bcx / sxy))
        img[0, cy - 1:cy + 2, cx - 1:cx + 2] = 0
        img[-1, cy - 1:cy + 2, cx - 1:cx + 2] = 0
    return img.astype(np.int16), seg, spacing, origin, direction


# ----------------------------------------------------------------------------------------------
# small MR case
# ----------------------------------------------------------------------------------------------
def _mr_case(seed: int, idx: int, scale: float, offs):
    rng = _rng(seed, _MR_CODE, idx)
    nz = _scaled(24 + (7 * idx + offs[0]) % 17, scale, 12)
    ny = _scaled(56 + (13 * idx + offs[1]) % 25, scale, 32)
    nx = _scaled(56 + (11 * idx + offs[2]) % 25, scale, 32)
    shape = (nz, ny, nx)
    sxy = float(np.round(rng.uniform(0.8, 1.05), 4))
    sz = float(np.round(rng.uniform(2.5, 4.0), 3))
    spacing = (sxy, float(np.round(sxy * rng.uniform(0.97, 1.03), 4)), sz)
    origin = (float(np.round(rng.uniform(-120, -60), 3)), float(np.round(rng.uniform(-140, -80), 3)),
              float(np.round(rng.uniform(-90, -20), 3)))
    direction = _direction(("flip", "identity", "oblique")[idx % 3], rng)
    g = _grid(shape, spacing)
    x, y, z = g
    # extents between the first and last voxel centre (mm)
    ex, ey, ez = (nx - 1) * spacing[0], (ny - 1) * spacing[1], (nz - 1) * sz

    bc = (ex * (0.5 + rng.uniform(-0.04, 0.04)), ey * (0.5 + rng.uniform(-0.04, 0.04)),
          ez * (0.5 + rng.uniform(-0.03, 0.03)))
    br = (rng.uniform(0.30, 0.34) * ex, rng.uniform(0.34, 0.38) * ey, rng.uniform(0.36, 0.40) * ez)
    border = idx == 5
    if border:  # brain cut by the first and last slice
        bc = (bc[0], bc[1], ez / 2)
        br = (br[0], br[1], 0.62 * ez)
    brain0 = _ellipsoid(g, bc, br)
    # modality 1: larger skull strip that contains modality 0's -> the mask is the union
    brain1 = _ellipsoid(g, (bc[0] + 1.5 * spacing[0], bc[1], bc[2]),
                        (br[0] + 3 * spacing[0], br[1] + 1.5 * spacing[1], br[2] + 0.4 * sz)) | brain0
    bias = 1.0 + 0.15 * (x - bc[0]) / ex + 0.10 * (y - bc[1]) / ey + 0.0 * z
    flair = np.where(brain0, 300.0 * bias + rng.normal(0, 25, size=shape), 0.0)
    t1 = np.where(brain1, 500.0 * bias + rng.normal(0, 35, size=shape), 0.0)

    tc = (bc[0] + rng.uniform(-0.2, 0.2) * br[0], bc[1] + rng.uniform(-0.2, 0.2) * br[1],
          bc[2] + rng.uniform(-0.15, 0.15) * min(br[2], 0.4 * ez))
    edema = _ellipsoid(g, tc, (rng.uniform(0.12, 0.16) * ex, rng.uniform(0.12, 0.16) * ey,
                               max(rng.uniform(0.15, 0.2) * ez, 2.5 * sz)))
    edema |= _ellipsoid(g, (tc[0] + 0.1 * ex, tc[1] - 0.06 * ey, tc[2]),
                        (0.09 * ex, 0.07 * ey, max(0.1 * ez, 2.0 * sz)))
    edema &= brain0
    core = _ellipsoid(g, tc, (rng.uniform(0.045, 0.065) * ex, rng.uniform(0.045, 0.065) * ey,
                              max(rng.uniform(0.06, 0.09) * ez, 1.5 * sz)))
    if idx % 3 == 1:  # disconnected second core, on the side towards the brain centre
        sgn = -1.0 if tc[0] > bc[0] else 1.0
        core |= _ellipsoid(g, (tc[0] + sgn * 0.15 * ex, tc[1] - 0.04 * ey, tc[2]),
                           (0.03 * ex, 0.03 * ey, max(0.04 * ez, 1.2 * sz)))
    if idx == 2:  # two cubes touching only at one corner
        core = np.zeros(shape, dtype=bool)
        cz, cy, cx = int(round(tc[2] / sz)), int(round(tc[1] / spacing[1])), int(round(tc[0] / spacing[0]))
        core[cz - 2:cz, cy - 3:cy, cx - 3:cx] = True
        core[cz:cz + 2, cy:cy + 3, cx:cx + 3] = True
    core &= brain0
    edema |= core
    vent = np.zeros(shape, dtype=bool)
    if idx % 2 == 0:  # "ventricle": enclosed region exactly 0 in every modality -> a filled hole
        vent = _ellipsoid(g, (bc[0] - 0.45 * br[0], bc[1], bc[2]),
                          (0.05 * ex, 0.09 * ey, max(0.1 * ez, 2.0 * sz))) & ~core
        edema &= ~vent

    seg = np.zeros(shape, dtype=np.uint8)
    seg[edema] = 1
    seg[core] = 2
    bias_full = np.broadcast_to(bias, shape)
    flair[edema] = 600.0 * bias_full[edema] + rng.normal(0, 40, int(edema.sum()))
    t1[edema] = 420.0 + rng.normal(0, 30, int(edema.sum()))
    flair[core] = 450.0 + rng.normal(0, 50, int(core.sum()))
    t1[core] = 800.0 + rng.normal(0, 70, int(core.sum()))

    flair[vent] = 0.0
    t1[vent] = 0.0
    if border:  # exact zeros on the first / last slice inside the brain (touch the border)
        cy, cx = int(round(bc[1] / spacing[1])), int(round(bc[0] / spacing[0]))
        for zz in (0, nz - 1):
            flair[zz, cy - 1:cy + 2, cx - 1:cx + 2] = 0.0
            t1[zz, cy - 1:cy + 2, cx - 1:cx + 2] = 0.0
            seg[zz, cy - 1:cy + 2, cx - 1:cx + 2] = 0
    if idx == 3:  # class 2 absent
        seg[seg == 2] = 1
    return (flair.astype(np.float32), t1.astype(np.float32)), seg, spacing, origin, direction


# ----------------------------------------------------------------------------------------------
# public: small tasks
# ----------------------------------------------------------------------------------------------
def make_task(parent, kind: str = "ct", *, task_id: int = 501, name: str | None = None,
              n_cases: int | None = None, seed: int = 0, shape_scale: float = 1.0) -> pathlib.Path:
    """Write a deterministic MSD-style raw task folder parent/Task{task_id:03d}_{name}/ and return its path.

    ``kind`` "ct" (1 modality "CT", int16, classes organ/tumour/vessel, default 8 cases) or "mr"
    (modalities "FLAIR", "T1w", float32, classes edema/tumour core, default 6 cases). ``name`` defaults
    to "SynthCT" / "SynthMR". ``shape_scale`` multiplies the in-plane and slice dimensions (default
    cases are 24-48 slices x 48-80 x 48-80 voxels, each case a different shape).

    Arrays are built in numpy (z, y, x) order; spacing, origin and direction are set in ITK (x, y, z)
    order. An existing folder of the same name is replaced. The special situations each case carries
    are listed in the module docstring and in ``SITUATIONS`` / ``situation_cases()``.
    """
    kind = _check_kind(kind)
    n = DEFAULT_N_CASES[kind] if n_cases is None else int(n_cases)
    if n < 1:
        raise ValueError("n_cases must be >= 1")
    scale = float(shape_scale)
    if not scale > 0:
        raise ValueError("shape_scale must be > 0")
    code = _CT_CODE if kind == "ct" else _MR_CODE
    trng = _rng(seed, code, _TASK_LEVEL)
    offs = [int(v) for v in trng.integers(0, 1000, size=3)]
    ids = case_ids(kind, n)
    if name is None:
        name = "SynthCT" if kind == "ct" else "SynthMR"
    d = _prepare(parent, "Task%03d_%s" % (int(task_id), name))

    if kind == "ct":
        for i, cid in enumerate(ids):
            img, seg, sp, org, dr = _ct_case(seed, i, scale, offs)
            _write(img, sp, org, dr, d / "imagesTr" / f"{cid}_0000.nii.gz")
            _write(seg, sp, org, dr, d / "labelsTr" / f"{cid}.nii.gz")
        test_id = "ct_test_000"
        img, _, sp, org, dr = _ct_case(seed, 1000, scale, offs, empty_idx=-1)
        _write(img, sp, org, dr, d / "imagesTs" / f"{test_id}_0000.nii.gz")
        _write_dataset_json(d, name, "synthetic CT: organ, tumour, vessel", {"0": "CT"},
                            {"0": "background", "1": "organ", "2": "tumour", "3": "vessel"},
                            ids, [test_id], trng)
    else:
        for i, cid in enumerate(ids):
            chans, seg, sp, org, dr = _mr_case(seed, i, scale, offs)
            for c, arr in enumerate(chans):
                _write(arr, sp, org, dr, d / "imagesTr" / f"{cid}_{c:04d}.nii.gz")
            _write(seg, sp, org, dr, d / "labelsTr" / f"{cid}.nii.gz")
        test_id = "mr_test_1"
        chans, _, sp, org, dr = _mr_case(seed, 1000, scale, offs)
        for c, arr in enumerate(chans):
            _write(arr, sp, org, dr, d / "imagesTs" / f"{test_id}_{c:04d}.nii.gz")
        _write_dataset_json(d, name, "synthetic 2-channel brain MR: edema, tumour core",
                            {"0": "FLAIR", "1": "T1w"},
                            {"0": "background", "1": "edema", "2": "tumour_core"}, ids, [test_id], trng)
    return d


# ----------------------------------------------------------------------------------------------
# benchmark tasks
# ----------------------------------------------------------------------------------------------
def _noise_lut(sd: float) -> np.ndarray:
    """int16 table mapping a uniform byte to a (discretised) N(0, sd) value."""
    nd = NormalDist()
    return np.array([round(sd * nd.inv_cdf((k + 0.5) / 256.0)) for k in range(256)], dtype=np.int16)


def _box_ellipsoid(shape, spacing_xyz, center_xyz, radii_xyz):
    """Slices of the sub-box around an ellipsoid and its boolean mask within that box (or None)."""
    sx, sy, sz = spacing_xyz
    sl, coords = [], []
    for c, r, s, n in ((center_xyz[2], radii_xyz[2], sz, shape[0]), (center_xyz[1], radii_xyz[1], sy, shape[1]),
                       (center_xyz[0], radii_xyz[0], sx, shape[2])):
        lo = max(0, int(np.floor((c - r) / s)))
        hi = min(n, int(np.ceil((c + r) / s)) + 1)
        if hi <= lo:
            return None, None
        sl.append(slice(lo, hi))
        coords.append((np.arange(lo, hi) * s - c) / r)
    cz, cy, cx = coords
    m = (cz[:, None, None] ** 2 + cy[None, :, None] ** 2 + cx[None, None, :] ** 2) <= 1.0
    return tuple(sl), m


def _bench_ct_case(seed: int, idx: int):
    rng = _rng(seed, _BENCH_CT_CODE, idx)
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731  (python floats keep float32 math)
    nz, ny, nx = int(rng.integers(100, 251)), 512, 512
    shape = (nz, ny, nx)
    sxy = float(np.round(rng.uniform(0.6, 0.95), 4))
    sz = float(rng.choice([0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]))
    spacing = (sxy, sxy, sz)
    origin = (float(np.round(-256 * sxy + u(-20, 20), 3)), float(np.round(-256 * sxy + u(-40, 10), 3)),
              float(np.round(u(-1200, -300), 3)))
    direction = _direction(("identity", "flip")[idx % 2], rng)
    lz = nz * sz
    # in-plane coordinates (mm) relative to the image centre; "+ to_idx" gives index * spacing
    xc = ((np.arange(nx) - (nx - 1) / 2) * sxy).astype(np.float32)
    yc = ((np.arange(ny) - (ny - 1) / 2) * sxy).astype(np.float32)
    zmm = (np.arange(nz) * sz).astype(np.float32)
    to_idx_x = (nx - 1) / 2 * sxy
    to_idx_y = (ny - 1) / 2 * sxy

    def box(cx, cy, rx, ry):
        """in-plane index slices (y, x) covering centred-mm box [c - r, c + r]"""
        x0 = max(0, int((cx - rx + to_idx_x) / sxy) - 1)
        x1 = min(nx, int((cx + rx + to_idx_x) / sxy) + 2)
        y0 = max(0, int((cy - ry + to_idx_y) / sxy) - 1)
        y1 = min(ny, int((cy + ry + to_idx_y) / sxy) + 2)
        return slice(y0, y1), slice(x0, x1)

    fov_r = (nx / 2 - 1) * sxy
    fov2d = (xc[None, :] ** 2 + yc[:, None] ** 2) <= fov_r ** 2
    bx, by = u(-12, 12), u(-8, 20)
    ax0 = u(0.72, 0.86) * fov_r
    ay0 = ax0 * u(0.62, 0.74)
    ph, fr = u(0, 2 * np.pi), u(0.5, 1.5)
    ax_z = (ax0 * (1 + 0.05 * np.sin(2 * np.pi * fr * zmm / lz + ph))).astype(np.float32)
    ay_z = (ay0 * (1 + 0.04 * np.sin(2 * np.pi * fr * zmm / lz + ph + 1.0))).astype(np.float32)
    inv_ax2 = (1.0 / ax_z ** 2)[:, None, None]
    inv_ay2 = (1.0 / ay_z ** 2)[:, None, None]
    tf, tm = u(0.06, 0.11), u(0.03, 0.05)
    inner = (1 - tf - tm) ** 2
    dx2 = ((xc - bx) ** 2)[None, None, :]
    dy2 = ((yc - by) ** 2)[None, :, None]

    # spine (fixed in-plane position) with intervertebral discs
    rs = u(14, 18)
    spy = by + 0.62 * ay0
    sp_sl = box(bx, spy, rs, rs)
    ds2 = (xc[None, sp_sl[1]] - bx) ** 2 + (yc[sp_sl[0], None] - spy) ** 2
    spine_cort = ds2 <= rs ** 2
    spine_canc = ds2 <= (rs - 2.5) ** 2
    disc_period, disc_phase = u(28, 34), u(0, 30)
    disc_z = ((zmm + disc_phase) % disc_period) < 6.0
    # aorta / IVC (class 3), in front of the spine
    ra, ri = u(9, 12), u(8, 11)
    aoy = spy - rs - 4 - ra
    ao_x = (bx + 0.08 * ax0 + 4 * np.sin(zmm / 60.0 + ph)).astype(np.float32)
    ivx = bx - 0.14 * ax0
    ao_sl = box(bx + 0.08 * ax0, aoy, ra + 5, ra)
    iv_sl = box(ivx, aoy, ri, ri)
    ivc2d = ((xc[None, iv_sl[1]] - ivx) ** 2 + (yc[iv_sl[0], None] - aoy) ** 2) <= ri ** 2
    # lungs in the upper part of the volume
    lung_start = u(0.6, 0.75)
    lung_s = np.clip((zmm / lz - lung_start) / (1 - lung_start), 0, 1) ** 0.5
    lung_c = [(bx + side * 0.45 * ax0, by - 0.1 * ay0) for side in (-1, 1)]
    # organ (class 1): liver-like ellipsoid on one side
    ocx, ocy = bx - 0.32 * ax0, by - 0.12 * ay0
    orx, ory = 0.40 * ax0, 0.58 * ay0
    ocz = u(0.3, 0.55) * lz
    orz = max(u(0.15, 0.25) * lz, 40.0)
    org_sl = box(ocx, ocy, orx, ory)
    org2d = ((((xc[org_sl[1]] - ocx) / orx) ** 2)[None, :] + (((yc[org_sl[0]] - ocy) / ory) ** 2)[:, None])
    # low-frequency texture
    k1, k2, p1, p2 = u(0.01, 0.03), u(0.01, 0.03), u(0, 2 * np.pi), u(0, 2 * np.pi)
    tex2d = (np.sin(k1 * xc[None, :] + p1) * np.cos(k2 * yc[:, None] + p2)).astype(np.float32)
    tex_z = np.cos(zmm / u(30, 60) + p2).astype(np.float32)

    img = np.empty(shape, dtype=np.int16)
    seg = np.zeros(shape, dtype=np.uint8)
    for k0 in range(0, nz, 16):
        zs = slice(k0, min(nz, k0 + 16))
        r2 = dx2 * inv_ax2[zs] + dy2 * inv_ay2[zs]
        ch = np.full(r2.shape, -1000, dtype=np.int16)
        sg = seg[zs]
        np.putmask(ch, r2 <= 1.0, -100)  # subcutaneous fat
        np.putmask(ch, r2 <= (1 - tf) ** 2, 50)  # muscle wall
        interior = r2 <= inner
        np.putmask(ch, interior, 35)  # soft tissue
        np.putmask(ch, interior & ((tex2d[None] * tex_z[zs, None, None]) > 0.45), -90)  # visceral fat
        ls = lung_s[zs]
        if ls.max() > 0:
            s = np.maximum(ls, 1e-3)[:, None, None]
            for lcx, lcy in lung_c:
                sy_, sx_ = box(lcx, lcy, 0.3 * ax0, 0.5 * ay0)
                lr = (((xc[sx_] - lcx) ** 2)[None, None, :] / (0.3 * ax0 * s) ** 2
                      + ((yc[sy_] - lcy) ** 2)[None, :, None] / (0.5 * ay0 * s) ** 2)
                sub = ch[:, sy_, sx_]
                np.putmask(sub, (lr <= 1.0) & interior[:, sy_, sx_] & (ls > 0)[:, None, None], -850)
        # spine
        bone = ~disc_z[zs][:, None, None]
        sub = ch[:, sp_sl[0], sp_sl[1]]
        np.putmask(sub, spine_cort[None] & bone, 900)
        np.putmask(sub, spine_canc[None] & bone, 250)
        np.putmask(sub, spine_canc[None] & ~bone, 80)
        # organ
        oz2 = ((zmm[zs] - ocz) / orz) ** 2
        if oz2.min() <= 1.0:
            org = (org2d[None] + oz2[:, None, None] <= 1.0) & interior[:, org_sl[0], org_sl[1]]
            np.putmask(ch[:, org_sl[0], org_sl[1]], org, 100)
            np.putmask(sg[:, org_sl[0], org_sl[1]], org, 1)
        # vessels
        ves = (((xc[None, None, ao_sl[1]] - ao_x[zs, None, None]) ** 2
                + ((yc[ao_sl[0]] - aoy) ** 2)[None, :, None]) <= ra ** 2) & interior[:, ao_sl[0], ao_sl[1]]
        np.putmask(ch[:, ao_sl[0], ao_sl[1]], ves, 170)
        np.putmask(sg[:, ao_sl[0], ao_sl[1]], ves, 3)
        ves = ivc2d[None] & interior[:, iv_sl[0], iv_sl[1]]
        np.putmask(ch[:, iv_sl[0], iv_sl[1]], ves, 170)
        np.putmask(sg[:, iv_sl[0], iv_sl[1]], ves, 3)
        img[zs] = ch

    # intra-organ vessel branches (class 3): spheres along random paths, drawn in sub-boxes
    for _ in range(int(rng.integers(4, 8))):
        p = np.array([ocx + to_idx_x, ocy + to_idx_y, ocz]) + rng.uniform(-0.3, 0.3, 3) * [orx, ory, orz]
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        r = u(2.5, 4.0)
        length = u(30, 80)
        t = 0.0
        while t < length:
            sl, m = _box_ellipsoid(shape, spacing, p, (r, r, max(r, 0.6 * sz)))
            if sl is not None:
                sub = seg[sl]
                m = m & (sub == 1)
                sub[m] = 3
                img[sl][m] = 170
            step = max(r, 0.5 * sz) * 0.8
            p = p + v * step
            v = v + rng.normal(scale=0.15, size=3)
            v /= np.linalg.norm(v)
            t += step
            r = max(1.2, r * 0.985)

    # lesions (class 2): dozens of small blobs, most inside the organ
    n_les = int(rng.integers(20, 61))
    for j in range(n_les):
        if j % 7 == 6:  # elsewhere in the soft tissue
            ang, rr, cz = u(0, 2 * np.pi), u(0.2, 0.6), u(0.1, 0.9) * lz
            kz = min(nz - 1, int(cz / sz))
            c = np.array([bx + rr * ax_z[kz] * np.cos(ang) + to_idx_x,
                          by + rr * ay_z[kz] * np.sin(ang) + to_idx_y, cz])
            val = int(rng.integers(30, 60))
        else:
            w = rng.normal(size=3)
            w *= u(0, 0.8) ** (1 / 3) / np.linalg.norm(w)
            c = np.array([ocx + w[0] * orx + to_idx_x, ocy + w[1] * ory + to_idx_y, ocz + w[2] * orz])
            val = int(rng.integers(25, 60)) if rng.random() < 0.8 else int(rng.integers(130, 160))
        r = float(np.exp(u(np.log(2.0), np.log(9.0))))
        radii = (r * u(0.8, 1.2), r * u(0.8, 1.2), max(r * u(0.8, 1.2), 0.6 * sz))
        sl, m = _box_ellipsoid(shape, spacing, c, radii)
        if sl is None:
            continue
        sub = seg[sl]
        m &= img[sl] > -500  # not into air / lung
        sub[m] = 2
        img[sl][m] = val

    # noise + texture, zero outside the circular FOV
    lut = _noise_lut(12.0)
    tex_i = (6.0 * tex2d).astype(np.int16)
    for k0 in range(0, nz, 16):
        zs = slice(k0, min(nz, k0 + 16))
        ch = img[zs]
        ch += lut[rng.integers(0, 256, size=ch.shape, dtype=np.uint8)]
        ch += tex_i
        ch *= fov2d
        seg[zs] *= fov2d
    return img, seg, spacing, origin, direction


def _bench_mr_case(seed: int, idx: int):
    rng = _rng(seed, _BENCH_MR_CODE, idx)
    shape = (155, 240, 240)
    spacing = (1.0, 1.0, 1.0)
    origin = (-0.0, -239.0, 0.0)
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731  (python floats keep float32 math)
    nz, ny, nx = shape
    x = np.arange(nx, dtype=np.float32)[None, None, :]
    y = np.arange(ny, dtype=np.float32)[None, :, None]
    z = np.arange(nz, dtype=np.float32)[:, None, None]
    bc = (120 + u(-5, 5), 118 + u(-8, 8), 72 + u(-5, 5))
    br = (u(62, 70), u(78, 88), u(56, 64))
    fx, fy, fz = u(0.25, 0.4), u(0.25, 0.4), u(0.25, 0.4)
    pfx, pfy, pfz = u(0, 2 * np.pi), u(0, 2 * np.pi), u(0, 2 * np.pi)
    r2 = ((x - bc[0]) / br[0]) ** 2 + ((y - bc[1]) / br[1]) ** 2 + ((z - bc[2]) / br[2]) ** 2
    deform = 1.0 + 0.04 * np.cos(0.05 * x + pfx) * np.cos(0.04 * y + pfy)
    brain = r2 <= deform * deform
    fold = np.cos(fx * x + pfx) * np.cos(fy * y + pfy) * np.cos(fz * z + pfz)
    thr = 0.72 + 0.12 * fold
    # tissue codes: 0 wm, 1 gm, 2 csf, 3 edema, 4 necrosis / non-enhancing, 5 enhancing
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[r2 > thr * thr] = 1
    tissue[(r2 > 0.86 ** 2) & (fold > 0.75)] = 2
    for side in (-1, 1):  # lateral ventricles
        sl, m = _box_ellipsoid(shape, spacing, (bc[0] + side * 7, bc[1] - 5, bc[2] + 8), (5, 22, 10))
        tissue[sl][m] = 2

    # tumour, drawn in sub-boxes
    ang = u(0, 2 * np.pi)
    tc = (bc[0] + np.cos(ang) * 0.45 * br[0], bc[1] + np.sin(ang) * 0.45 * br[1], bc[2] + u(-15, 15))
    seg = np.zeros(shape, dtype=np.uint8)
    for _ in range(3):
        c = [tc[i] + u(-12, 12) for i in range(3)]
        sl, m = _box_ellipsoid(shape, spacing, c, (u(15, 30), u(15, 30), u(15, 30)))
        if sl is not None:
            seg[sl][m] = 1
    rc = (u(10, 18), u(10, 18), u(10, 18))
    th = u(3, 5)
    sl, m = _box_ellipsoid(shape, spacing, tc, rc)
    seg[sl][m] = 3  # enhancing rim ...
    sl, m = _box_ellipsoid(shape, spacing, tc, tuple(max(1.0, v - th) for v in rc))
    seg[sl][m] = 2  # ... around a non-enhancing / necrotic centre
    for _ in range(int(rng.integers(0, 4))):  # satellite enhancing nodules
        c = [tc[i] + u(-25, 25) for i in range(3)]
        sl, m = _box_ellipsoid(shape, spacing, c, (u(2, 4), u(2, 4), u(2, 4)))
        if sl is not None:
            seg[sl][m] = 3
    seg[~brain] = 0
    lab = seg > 0
    tissue[lab] = seg[lab] + 2

    bias = (1.0 + 0.08 * np.sin(0.02 * x + pfy)) * (1.0 + 0.06 * np.cos(0.025 * y + pfz))  # (1, ny, nx)
    nd = NormalDist()
    unit_lut = np.array([nd.inv_cdf((k + 0.5) / 256.0) for k in range(256)], dtype=np.float32)
    # tissue values per channel: (wm, gm, csf, edema, necrosis, enhancing)
    table = {
        "FLAIR": (400, 480, 80, 760, 320, 560),
        "T1w": (700, 520, 180, 540, 300, 620),
        "t1gd": (720, 540, 190, 560, 310, 1250),
        "T2w": (350, 500, 1200, 900, 1100, 650),
    }
    outside = ~brain
    chans = []
    for name in ("FLAIR", "T1w", "t1gd", "T2w"):
        vals = np.array(table[name], dtype=np.float32)
        v = vals[tissue]
        v *= bias
        v += unit_lut[rng.integers(0, 256, size=shape, dtype=np.uint8)] * np.float32(0.035 * vals[0])
        np.rint(v, out=v)
        np.maximum(v, 1.0, out=v)
        v[outside] = 0.0
        chans.append(v)
    return chans, seg, spacing, origin, direction


def make_benchmark_task(parent, kind: str = "ct", *, task_id: int = 601, n_cases: int | None = None,
                        seed: int = 0) -> pathlib.Path:
    """Write a realistic-size MSD-style raw task parent/Task{task_id:03d}_Bench{CT,MR}/ for speed benchmarks.

    kind "ct": default 12 cases of 512x512x(100-250) int16, classes organ / lesion (dozens of small
    blobs per case) / vessel, circular FOV (0 outside). kind "mr": default 4 cases of 4 channels
    (FLAIR, T1w, t1gd, T2w) 240x240x155 float32 (BraTS-like), classes edema / non-enhancing /
    enhancing tumour. Arrays in numpy (z, y, x) order, geometry in ITK (x, y, z) order. Deterministic;
    no test cases (``imagesTs`` is empty).
    """
    kind = _check_kind(kind)
    n = _BENCH_DEFAULT_N_CASES[kind] if n_cases is None else int(n_cases)
    if n < 1:
        raise ValueError("n_cases must be >= 1")
    name = "BenchCT" if kind == "ct" else "BenchMR"
    d = _prepare(parent, "Task%03d_%s" % (int(task_id), name))
    if kind == "ct":
        ids = ["bct_%d" % i for i in range(n)]
        for i, cid in enumerate(ids):
            img, seg, sp, org, dr = _bench_ct_case(seed, i)
            _write(img, sp, org, dr, d / "imagesTr" / f"{cid}_0000.nii.gz")
            _write(seg, sp, org, dr, d / "labelsTr" / f"{cid}.nii.gz")
        _write_dataset_json(d, name, "synthetic abdominal CT benchmark: organ, lesions, vessels",
                            {"0": "CT"}, {"0": "background", "1": "organ", "2": "lesion", "3": "vessel"},
                            ids, [], _rng(seed, _BENCH_CT_CODE, _TASK_LEVEL))
    else:
        ids = ["bmr_%03d" % i for i in range(n)]
        for i, cid in enumerate(ids):
            chans, seg, sp, org, dr = _bench_mr_case(seed, i)
            for c, arr in enumerate(chans):
                _write(arr, sp, org, dr, d / "imagesTr" / f"{cid}_{c:04d}.nii.gz")
            _write(seg, sp, org, dr, d / "labelsTr" / f"{cid}.nii.gz")
        _write_dataset_json(d, name, "synthetic BraTS-like 4-channel MR benchmark",
                            {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                            {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                             "3": "enhancing tumour"}, ids, [], _rng(seed, _BENCH_MR_CODE, _TASK_LEVEL))
    return d
