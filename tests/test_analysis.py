"""The pure analysis functions against the straightforward implementations nnU-Net v1 uses
(np.where bounding box, scipy binary_fill_holes, skimage label class by class, numpy stats)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as sk_label

from catalog.analysis import case as case_module
from catalog.analysis import crop as crop_module
from catalog.analysis.case import analyze_case
from catalog.analysis.crop import FilledMask, bounding_box, crop_mask, crop_seg, fill_holes_in_box
from catalog.analysis.intensity import compute_stats, mean_v1, median_v1, percentile_v1, pooled_stats, std_v1
from catalog.analysis.regions import analyze_regions


def v1_bbox(mask):
    """nnU-Net v1's get_bbox_from_mask."""
    idx = np.where(mask != 0)
    return tuple((int(np.min(i)), int(np.max(i)) + 1) for i in idx)


def nonzero_mask(channels):
    """nnU-Net v1's create_nonzero_mask before hole filling: any channel != 0."""
    mask = channels[0] != 0
    for channel in channels[1:]:
        mask |= channel != 0
    return mask


def random_volume(rng, shape=(14, 17, 19), density=0.5, blobs=True):
    vol = (rng.random(shape) < density).astype(np.uint8)
    if blobs:
        vol = ndimage.binary_opening(vol).astype(np.uint8)
    return vol


# MAX_ROW_CANDIDATE_SHARE: the default; every mask by rows; every mask by labelling all zeros
HOLE_FILLING_PATHS = [pytest.param(None, id="default"), pytest.param(2.0, id="rows"),
                      pytest.param(-1.0, id="labelling")]


@pytest.mark.parametrize("path", HOLE_FILLING_PATHS)
@pytest.mark.parametrize("seed", range(12))
def test_bbox_and_hole_filling_match_v1(seed, path, monkeypatch):
    if path is not None:
        monkeypatch.setattr(crop_module, "MAX_ROW_CANDIDATE_SHARE", path)
    rng = np.random.default_rng(seed)
    shape = (rng.integers(5, 20), rng.integers(5, 20), rng.integers(5, 20))
    channel = np.zeros(shape, np.int16)
    inner = tuple(slice(rng.integers(0, 3), s - rng.integers(0, 3)) for s in shape)
    channel[inner] = rng.integers(-2, 3, size=channel[inner].shape)  # many exact zeros inside
    mask = nonzero_mask([channel])
    if not mask.any():
        assert crop_mask([channel]) is None
        return
    assert bounding_box(mask) == v1_bbox(mask)
    filled_v1 = ndimage.binary_fill_holes(mask)
    bbox, filled = crop_mask([channel])
    assert bbox == v1_bbox(filled_v1)
    sl = tuple(slice(a, b) for a, b in bbox)
    np.testing.assert_array_equal(filled.to_array(), filled_v1[sl])
    assert filled.count() == np.count_nonzero(filled_v1)
    z = int(rng.integers(0, filled.shape[0]))
    np.testing.assert_array_equal(filled.planes(z, z + 2), filled_v1[sl][z:z + 2])


def test_holes_touching_the_volume_border_are_not_filled():
    mask = np.ones((5, 6, 6), bool)
    mask[2, 2:4, 2:4] = False  # enclosed: a hole
    mask[0, 2:4, 2:4] = False  # on the first slice: touches the border, stays outside
    filled = fill_holes_in_box(mask)
    assert filled[2, 2:4, 2:4].all()
    assert not filled[0, 2:4, 2:4].any()
    np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(mask))


def _tube_volume(rng, shape):
    """Random blobs plus zero tubes along z that open onto the first or last plane only: in a
    slab that does not hold that plane they look enclosed, and only the union-find across slabs
    shows they reach the border."""
    mask = rng.random(shape) < rng.uniform(0.55, 0.9)
    for _ in range(rng.integers(1, 4)):
        y, x = rng.integers(1, shape[1] - 1), rng.integers(1, shape[2] - 1)
        start, stop = sorted(rng.integers(0, shape[0], size=2))
        if rng.random() < 0.5:
            start = 0
        else:
            stop = shape[0]
        mask[:, y - 1:y + 2, x - 1:x + 2] = True
        mask[start:stop, y, x] = False
        if rng.random() < 0.5:  # a side branch that turns back up: zig-zag across slabs
            turn = (start + stop) // 2
            mask[turn, y, x:min(shape[2] - 1, x + 3)] = False
    mask[:, 0, :] = mask[:, -1, :] = mask[:, :, 0] = mask[:, :, -1] = True  # the box is the whole volume
    return mask


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("slab_voxels", [1, 90, 700, 1 << 23])
def test_slab_hole_filling_matches_scipy_whatever_the_slab_size(seed, slab_voxels):
    rng = np.random.default_rng(500 + seed)
    shape = (int(rng.integers(2, 24)), int(rng.integers(3, 12)), int(rng.integers(3, 12)))
    mask = _tube_volume(rng, shape)
    expected = ndimage.binary_fill_holes(mask)  # 6-connected holes, like v1
    np.testing.assert_array_equal(fill_holes_in_box(mask, slab_voxels=slab_voxels), expected)


def test_slab_hole_filling_relabels_a_slab_whose_region_escapes_through_another(monkeypatch):
    mask = np.ones((8, 5, 5), bool)
    mask[0:6, 2, 2] = False  # opens onto the first plane only
    mask[7, 2, 2] = False  # on the last plane: reaches the border itself
    calls = []
    original = crop_module.cc3d.connected_components

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(crop_module.cc3d, "connected_components", counting)
    filled = fill_holes_in_box(mask, slab_voxels=2 * 7 * 7)  # slabs of 2 planes
    np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(mask))
    assert not filled[0:6, 2, 2].any()
    assert len(calls) == 4 + 2  # 4 slabs, then planes 2-3 and 4-5 again: their tube reaches plane 0


def _packed_box(mask):
    """`fill_holes_by_rows`'s input for a mask whose box is the whole array."""
    return np.packbits(mask, axis=-1), 0, mask.shape[2]


def test_row_spans_are_the_first_and_last_true_voxels_of_each_row():
    rng = np.random.default_rng(7)
    mask = np.zeros((3, 5, 21), bool)
    mask[..., 3:19] = rng.random((3, 5, 16)) < 0.3
    mask[1, 2] = False  # an empty row
    mask[2, 4, 3] = mask[2, 4, 18] = True  # the box's first and last x
    first, last, count = crop_module.row_spans(np.packbits(mask, axis=-1), 3, 16)
    for (z, y), n in np.ndenumerate(count):
        xs = np.flatnonzero(mask[z, y]) - 3
        assert n == xs.size
        assert (first[z, y], last[z, y]) == ((xs[0], xs[-1]) if xs.size else (16, -1))


@pytest.mark.parametrize("seed", range(40))
def test_row_hole_filling_matches_scipy(seed):
    rng = np.random.default_rng(700 + seed)
    shape = (int(rng.integers(1, 24)), int(rng.integers(1, 12)), int(rng.integers(1, 20)))
    mask = _tube_volume(rng, shape) if min(shape) >= 3 else rng.random(shape) < 0.8
    mask[..., 0] = mask[..., -1] = True  # the box's own x extent (y and z may be narrower)
    filled = crop_module.fill_holes_by_rows(*_packed_box(mask), max_candidates=mask.size)
    np.testing.assert_array_equal(filled.to_array(), ndimage.binary_fill_holes(mask))


def test_row_hole_filling_follows_a_region_through_other_rows_to_a_face():
    mask = np.ones((5, 7, 9), bool)
    mask[2, 3, 2:7] = False  # inside row (2, 3) only: a candidate region ...
    mask[2, 1:3, 4] = False  # ... joined up through row (2, 2) to row (2, 1) ...
    mask[2, 1, 5:] = False  # ... where it reaches the row's end: an edge zero, so all of it is outside
    mask[3, 5, 6] = False  # enclosed
    filled = crop_module.fill_holes_by_rows(*_packed_box(mask), max_candidates=mask.size)
    expected = ndimage.binary_fill_holes(mask)
    assert expected[3, 5, 6] and not expected[2, 3, 2:7].any()
    np.testing.assert_array_equal(filled.to_array(), expected)
    assert filled.count() == np.count_nonzero(expected)


def test_row_hole_filling_leaves_masks_with_many_zeros_inside_rows_to_labelling():
    mask = np.ones((4, 6, 8), bool)
    mask[1:3, 1:5, 2:6:2] = False  # 16 candidates
    assert crop_module.fill_holes_by_rows(*_packed_box(mask), max_candidates=15) is None
    assert crop_module.fill_holes_by_rows(*_packed_box(mask), max_candidates=16) is not None


@pytest.mark.parametrize("path", HOLE_FILLING_PATHS)
@pytest.mark.parametrize("seed", range(6))
def test_analyze_case_does_not_depend_on_the_slab_size(seed, path, monkeypatch):
    if path is not None:
        monkeypatch.setattr(crop_module, "MAX_ROW_CANDIDATE_SHARE", path)
    rng = np.random.default_rng(900 + seed)
    shape = (17, 13, 11)
    image = np.zeros(shape, np.int16)
    image[1:-1, 2:, 1:-2] = rng.integers(-3, 4, size=(15, 11, 8))
    label = np.zeros(shape, np.uint8)
    for c in (1, 2):
        label[random_volume(rng, shape, 0.2).astype(bool)] = c
    whole = analyze_case([image, image * 2], label, [1, 2])
    for slab_voxels in (1, 150, 1000):
        monkeypatch.setattr(crop_module, "SLAB_VOXELS", slab_voxels)  # crop and sampling slabs
        sliced = analyze_case([image, image * 2], label, [1, 2])
        assert (sliced.bbox, sliced.cropped_shape, sliced.nonzero_voxels, sliced.seg_values, sliced.regions) == \
            (whole.bbox, whole.cropped_shape, whole.nonzero_voxels, whole.seg_values, whole.regions)
        for a, b in zip(sliced.channels, whole.channels):
            np.testing.assert_array_equal(a.samples, b.samples)
    # and against v1's way: the whole cropped seg, np.unique, data[seg > 0][::10]
    bbox, filled = crop_mask([image, image * 2])
    seg = crop_seg(label, bbox, filled)
    assert whole.seg_values == tuple(int(v) for v in np.unique(seg))
    box = tuple(slice(a, b) for a, b in bbox)
    np.testing.assert_array_equal(whole.channels[1].samples, (image * 2)[box].astype(np.float32)[seg > 0][::10])


@pytest.mark.parametrize("labels", ["inside the crop", "also outside the crop", "with undeclared values", "none"])
@pytest.mark.parametrize("seed", range(4))
def test_analyze_case_matches_v1s_cropped_seg(seed, labels):
    """The label's own box (kept values, foreground box, seg values) against v1's way: the
    whole cropped seg, np.unique, data[seg > 0][::10] and the regions of that seg."""
    rng = np.random.default_rng(1300 + seed)
    shape = (15, 12, 14)
    image = np.zeros(shape, np.float32)
    image[2:-2, 1:-3, 3:-1] = rng.integers(-2, 3, size=(11, 8, 10))
    label = np.zeros(shape, np.uint8)
    if labels != "none":
        inner = (slice(3, 12), slice(2, 9), slice(4, 12)) if labels != "also outside the crop" else np.s_[:, :, :]
        for c in (1, 2):
            label[inner][random_volume(rng, label[inner].shape, 0.25).astype(bool)] = c
    if labels == "with undeclared values":
        label[5, 5, 5:8] = 7
    result = analyze_case([image, image * 3], label, [1, 2, 3])
    bbox, filled = crop_mask([image, image * 3])
    seg = crop_seg(label, bbox, filled)
    assert result.seg_values == tuple(int(v) for v in np.unique(seg))
    assert result.regions == analyze_regions(seg, [1, 2, 3])
    box = tuple(slice(a, b) for a, b in bbox)
    for channel, analysed in zip([image, image * 3], result.channels):
        np.testing.assert_array_equal(analysed.samples, channel[box][seg > 0][::10])


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("seed", range(3))
def test_label_summary_in_one_pass(seed, dtype, monkeypatch):
    monkeypatch.setattr(case_module, "LABEL_SLAB_BYTES", 300)  # many slabs of a few planes
    rng = np.random.default_rng(1400 + seed)
    label = np.zeros((9, 7, 6), dtype)
    label[rng.random(label.shape) < 0.05 * seed] = 3
    if np.dtype(dtype).kind != "u":
        label[2, 3, 4] = -2
    summary = case_module.summarize_label(label)
    assert (summary.min, summary.max) == (label.min(), label.max())
    assert summary.foreground_voxels == np.count_nonzero(label > 0)
    assert summary.foreground_box == (v1_bbox(label > 0) if (label > 0).any() else None)


def test_union_mask_over_channels():
    a = np.zeros((4, 4, 4), np.float32)
    b = np.zeros((4, 4, 4), np.float32)
    a[1, 1, 1] = 1
    b[2, 2, 2] = -3
    assert bounding_box(nonzero_mask([a, b])) == crop_mask([a, b])[0] == ((1, 3), (1, 3), (1, 3))


def test_crop_seg_marks_outside_background_and_keeps_outside_labels():
    label = np.zeros((3, 4, 4), np.uint8)
    label[1, 0, 0] = 2  # labelled voxel outside the mask
    filled = np.zeros((3, 4, 4), bool)
    filled[:, 1:, 1:] = True
    seg = crop_seg(label, ((0, 3), (0, 4), (0, 4)), FilledMask.from_array(filled))
    assert seg[1, 0, 0] == 2
    assert seg[0, 0, 0] == -1
    assert seg[0, 1, 1] == 0


@pytest.mark.parametrize("seed", range(10))
def test_regions_match_skimage_class_by_class(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (12, 15, 13)
    seg = np.zeros(shape, np.int16)
    for c in (1, 2, 3):
        seg[random_volume(rng, shape, 0.25).astype(bool)] = c
    seg[rng.random(shape) < 0.05] = -1
    classes = [1, 2, 3, 4]  # 4 is declared but absent
    result = analyze_regions(seg, classes)
    for c, got in zip(classes, result.classes):
        labelled, n = sk_label(seg == c, return_num=True)  # v1: full connectivity
        expected = [int(np.sum(labelled == i)) for i in range(1, n + 1)]
        assert list(got.region_voxel_counts) == expected
        assert got.voxel_count == int(np.sum(seg == c))
    _, n_all = sk_label(np.isin(seg, classes), return_num=True)
    assert result.all_classes_num_regions == n_all
    assert result.foreground_voxels == int(np.sum(seg > 0))
    assert result.foreground_values == tuple(int(v) for v in np.unique(seg[seg > 0]))


def test_a_declared_class_the_label_dtype_cannot_hold_is_absent():
    seg = np.zeros((3, 4, 5), np.uint8)
    seg[1, 1, 1:3] = 1
    result = analyze_regions(seg, [1, 300])  # numpy refused to cast 300 to uint8 here
    assert [(c.value, c.voxel_count, c.num_regions) for c in result.classes] == [(1, 2, 1), (300, 0, 0)]
    assert result.foreground_values == (1,)


def test_corner_touching_blobs_are_one_region():
    seg = np.zeros((4, 4, 4), np.int16)
    seg[0:2, 0:2, 0:2] = 1
    seg[2:4, 2:4, 2:4] = 1
    assert analyze_regions(seg, [1]).classes[0].region_voxel_counts == (16,)


def test_percentile_v1_matches_numpy_definition():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 999, 1000, 12345):
        values = np.sort(rng.normal(100, 50, n).astype(np.float32))
        for q in (0.5, 50.0, 99.5):
            got = percentile_v1(values, q)
            assert isinstance(got, np.float64)
            # numpy's own linear interpolation on the same float32 data, in float64
            expected = np.percentile(values.astype(np.float64), q)
            assert math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-4)


def test_median_v1_is_np_median_bit_for_bit():
    rng = np.random.default_rng(2)
    cases = [rng.normal(100, 50, n).astype(np.float32) for n in (1, 2, 3, 4, 999, 1000)]
    cases += [rng.integers(-3, 4, 1000).astype(np.float32),  # ties around the middle
              np.array([3.4028235e38, 3.4028235e38], np.float32),  # the float32 sum overflows
              np.array([1e-45, 3e-45], np.float32),  # subnormal halves
              np.array([1.0, np.nan, 2.0], np.float32), np.array([-np.inf, np.inf], np.float32)]
    for values in cases:
        with np.errstate(over="ignore", invalid="ignore"):
            got, expected = median_v1(np.sort(values)), np.median(values)
        assert got.dtype == expected.dtype == np.float32
        assert got.tobytes() == expected.tobytes() or (np.isnan(got) and np.isnan(expected)), values


def test_stats_types_and_values():
    rng = np.random.default_rng(1)
    samples = rng.integers(-1000, 2000, 5001).astype(np.float32)
    stats = compute_stats(samples).as_v1()
    assert list(stats) == ["median", "mean", "sd", "mn", "mx", "percentile_99_5", "percentile_00_5"]
    assert [type(v) for v in stats.values()] == [np.float32] * 5 + [np.float64] * 2
    assert stats["median"] == np.median(samples)
    assert stats["mn"] == samples.min() and stats["mx"] == samples.max()
    assert stats["mean"] == mean_v1(samples) and abs(stats["mean"] - samples.mean(dtype=np.float64)) < 1e-3
    assert abs(float(std_v1(samples)) - samples.astype(np.float64).std()) < 1e-2
    empty = compute_stats(np.empty(0, np.float32)).as_v1()
    assert all(type(v) is float and math.isnan(v) for v in empty.values())


@pytest.mark.parametrize("seed", range(30))
def test_stats_from_a_partition_equal_those_from_a_full_sort(seed):
    rng = np.random.default_rng(1500 + seed)
    values = rng.normal(0, 100, int(rng.integers(1, 5000))).astype(np.float32)
    if seed % 3 == 0:
        values = np.round(values / 50).astype(np.float32)  # many ties
    for special, share in ((np.nan, 0.05 * (seed % 2)), (np.inf, 0.02 * (seed % 5 == 0)), (-np.inf, 0.02 * (seed % 7 == 0))):
        values[rng.random(values.size) < share] = special
    ordered = np.sort(values)
    with np.errstate(invalid="ignore"):
        expected = (median_v1(ordered), ordered[0], ordered[-1], percentile_v1(ordered, 99.5), percentile_v1(ordered, 0.5))
        stats = compute_stats(values)
    got = (stats.median, stats.mn, stats.mx, stats.percentile_99_5, stats.percentile_00_5)
    for a, b in zip(got, expected):
        assert a == b or (math.isnan(a) and math.isnan(b))


def test_pooled_stats_concatenate_in_given_order():
    a = np.arange(10, dtype=np.float32)
    b = np.arange(5, dtype=np.float32) * 3
    assert pooled_stats([a, b]) == compute_stats(np.concatenate([a, b]))


def test_analyze_case_end_to_end_small():
    image = np.zeros((6, 8, 8), np.int16)
    image[1:5, 1:7, 2:7] = 100
    image[3, 3, 4] = 0  # enclosed zero: filled
    label = np.zeros_like(image, dtype=np.uint8)
    label[2:4, 2:4, 3:5] = 1
    label[4, 5, 5] = 2
    result = analyze_case([image], label, [1, 2, 3])
    assert result.bbox == ((1, 5), (1, 7), (2, 7))
    assert result.cropped_shape == (4, 6, 5)
    assert result.seg_values == (0, 1, 2)  # the mask fills the box: no -1
    assert [c.voxel_count for c in result.regions.classes] == [8, 1, 0]
    fg = image[1:5, 1:7, 2:7][label[1:5, 1:7, 2:7] > 0].astype(np.float32)[::10]
    np.testing.assert_array_equal(result.channels[0].samples, fg)
