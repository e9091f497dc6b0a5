"""Tests for catalog.imageio: exact parity with SimpleITK, integrity checks, fallbacks."""
from __future__ import annotations

import gzip
import hashlib
import os
import time

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog import imageio
from catalog.errors import ImageReadError
from catalog.imageio import (
    DEFAULT_MAX_IMAGE_BYTES,
    FileFingerprint,
    ImageHeader,
    LoadedImage,
    fingerprint_file,
    read_header,
    read_image,
    stat_file,
)

# NIfTI-1 header layout (348 bytes), used to patch or byte-swap headers written by SimpleITK.
HDR_FIELDS = [
    ("sizeof_hdr", "i4"), ("data_type", "S10"), ("db_name", "S18"), ("extents", "i4"),
    ("session_error", "i2"), ("regular", "S1"), ("dim_info", "u1"), ("dim", "i2", (8,)),
    ("intent_p1", "f4"), ("intent_p2", "f4"), ("intent_p3", "f4"), ("intent_code", "i2"),
    ("datatype", "i2"), ("bitpix", "i2"), ("slice_start", "i2"), ("pixdim", "f4", (8,)),
    ("vox_offset", "f4"), ("scl_slope", "f4"), ("scl_inter", "f4"), ("slice_end", "i2"),
    ("slice_code", "u1"), ("xyzt_units", "u1"), ("cal_max", "f4"), ("cal_min", "f4"),
    ("slice_duration", "f4"), ("toffset", "f4"), ("glmax", "i4"), ("glmin", "i4"),
    ("descrip", "S80"), ("aux_file", "S24"), ("qform_code", "i2"), ("sform_code", "i2"),
    ("quatern_b", "f4"), ("quatern_c", "f4"), ("quatern_d", "f4"), ("qoffset_x", "f4"),
    ("qoffset_y", "f4"), ("qoffset_z", "f4"), ("srow_x", "f4", (4,)), ("srow_y", "f4", (4,)),
    ("srow_z", "f4", (4,)), ("intent_name", "S16"), ("magic", "S4"),
]


def hdr_dtype(byteorder: str) -> np.dtype:
    return np.dtype([(f[0], byteorder + f[1] if f[1][0] != "S" else f[1], *f[2:]) for f in HDR_FIELDS])


assert hdr_dtype("<").itemsize == 348


def sitk_image(arr, spacing=None, origin=None, direction=None, is_vector=False) -> sitk.Image:
    img = sitk.GetImageFromArray(arr, isVector=is_vector)
    if spacing is not None:
        img.SetSpacing(spacing)
    if origin is not None:
        img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def nifti_bytes(tmp_path, arr, **geometry) -> bytes:
    """Uncompressed single-file NIfTI-1 bytes as SimpleITK writes them."""
    tmp = str(tmp_path / "_tmp_write.nii")
    sitk.WriteImage(sitk_image(arr, **geometry), tmp, useCompression=False)
    with open(tmp, "rb") as fh:
        data = fh.read()
    os.remove(tmp)
    return data


def patch_header(data: bytes, **fields) -> bytes:
    hdr = np.frombuffer(data[:348], hdr_dtype("<")).copy()
    for k, v in fields.items():
        hdr[k] = v
    return hdr.tobytes() + data[348:]


def to_big_endian(data: bytes, arr_dtype) -> bytes:
    """Byte-swap every header field and the voxels (vox_offset 352 as SimpleITK writes)."""
    hdr = np.frombuffer(data[:348], hdr_dtype("<"))
    assert int(hdr["vox_offset"][0]) == 352
    be_hdr = hdr.astype(hdr_dtype(">"))
    vox = np.frombuffer(data, dtype=np.dtype(arr_dtype).newbyteorder("<"), offset=352)
    return be_hdr.tobytes() + data[348:352] + vox.astype(vox.dtype.newbyteorder(">")).tobytes()


def write(path, data: bytes) -> str:
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=1)
    with open(path, "wb") as fh:
        fh.write(data)
    return str(path)


def sitk_array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _no_fallback(*args):
    raise AssertionError("expected the fast path, got the SimpleITK fallback")


def assert_same_as_sitk(path, *, fast: bool = True) -> LoadedImage:
    """read_image(path) equals SimpleITK in dtype, values and geometry; `fast`: no fallback."""
    with pytest.MonkeyPatch.context() as mp:
        if fast:
            mp.setattr(imageio, "_sitk_read_array", _no_fallback)
        loaded = read_image(path)
    img = sitk.ReadImage(str(path))
    ref = sitk.GetArrayFromImage(img)
    assert loaded.array.dtype == ref.dtype
    assert loaded.array.shape == ref.shape
    assert np.array_equal(loaded.array, ref)
    h = loaded.header
    assert h.size == img.GetSize()
    assert h.spacing == img.GetSpacing()
    assert h.origin == img.GetOrigin()
    assert h.direction == img.GetDirection()
    assert h.ndim == img.GetDimension()
    assert h.pixel_type == ref.dtype.name
    return assert_planes_match(path, loaded)


def planes_outcome(path, slab_voxels):
    """read_planes: the slabs put together, with the fingerprint and NaN count, or the check of
    the ImageReadError it raised (at opening or on the way)."""
    try:
        with imageio.read_planes(path) as reader:
            parts = []
            for z0, z1, planes in reader.slabs(slab_voxels):
                assert planes.shape[0] == z1 - z0
                parts.append(np.array(planes))
            return reader.header, np.concatenate(parts), reader.fingerprint, reader.nonfinite_count
    except ImageReadError as exc:
        return exc.check


def assert_planes_match(path, loaded: LoadedImage) -> LoadedImage:
    """read_planes gives what read_image gave, whatever the slab size."""
    for slab_voxels in (1, 37, 1 << 22):
        header, array, fingerprint, nonfinite = planes_outcome(path, slab_voxels)
        assert header == loaded.header and fingerprint == loaded.fingerprint
        assert array.dtype == loaded.array.dtype and array.shape == loaded.array.shape
        assert np.array_equal(array, loaded.array, equal_nan=True) and nonfinite == loaded.nonfinite_count
    return loaded


def random_array(dtype, shape=(3, 4, 5), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)
    return (rng.standard_normal(shape) * 1000).astype(dt)


ALL_DTYPES = ["uint8", "int8", "uint16", "int16", "int32", "uint32", "int64", "uint64",
              "float32", "float64"]


# ------------------------------------------------------------------------------------------
# Exact parity with SimpleITK
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_dtypes_match_simpleitk(tmp_path, dtype):
    arr = random_array(dtype)
    path = str(tmp_path / f"img_{dtype}.nii.gz")
    sitk.WriteImage(sitk_image(arr), path, useCompression=True)
    loaded = assert_same_as_sitk(path)
    assert loaded.array.dtype == np.dtype(dtype)
    assert np.array_equal(loaded.array, arr)
    assert loaded.nonfinite_count == 0


SCALINGS = [
    ("int16", 2.5, -1024.3),
    ("int16", 0.0, 5.0),  # ITK: slope 0 means 1, the intercept still applies
    ("int16", float("nan"), 3.0),  # non-finite slope -> 0 -> 1
    ("int16", float("inf"), 2.0),
    ("int16", 2.0, float("nan")),  # non-finite intercept -> 0
    ("int16", 1.0, 1e-17),  # below double epsilon: no rescale, stays int16
    ("int16", 1.0, 1e-10),  # above double epsilon: rescale to float32
    ("int16", 1e-10, 0.0),
    ("int16", -1.0, 0.0),
    ("int16", 1.0000001, 0.0),
    ("uint8", 0.5, 0.25),
    ("int8", 3.0, 1.0),
    ("uint16", 0.001, -7.0),
    ("int32", 1.7, 3.3),  # int32 -> float32 cast loses bits before scaling, like ITK
    ("uint32", 0.3, 100.0),
    ("int64", 1.5, 0.5),
    ("uint64", 1.5, 0.5),
    ("float32", 2.5, -1024.3),
    ("float64", 2.5, -1024.3),
    ("float32", 3e38, 0.0),  # overflow to inf in the float32 cast is reproduced
]


@pytest.mark.parametrize("dtype,slope,inter", SCALINGS)
def test_scl_slope_inter_match_simpleitk(tmp_path, dtype, slope, inter):
    arr = random_array(dtype, shape=(4, 5, 6), seed=1)
    data = patch_header(nifti_bytes(tmp_path, arr), scl_slope=slope, scl_inter=inter)
    path = write(tmp_path / "scaled.nii.gz", data)
    loaded = assert_same_as_sitk(path)
    if slope == 3e38:
        assert loaded.nonfinite_count == np.count_nonzero(~np.isfinite(loaded.array)) > 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(["uint8", "int16", "int32", "uint16", "float32", "float64"]),
    slope=st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    inter=st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    seed=st.integers(0, 2**16),
)
def test_random_scaling_matches_simpleitk(tmp_path, dtype, slope, inter, seed):
    arr = random_array(dtype, shape=(2, 3, 7), seed=seed)
    data = patch_header(nifti_bytes(tmp_path, arr), scl_slope=slope, scl_inter=inter)
    path = write(tmp_path / "rnd.nii", data)
    assert_same_as_sitk(path)


@pytest.mark.parametrize("dtype,slope,inter", [("int16", None, None), ("float32", None, None),
                                               ("uint16", 0.5, -3.0), ("float64", 2.0, 1.0)])
def test_big_endian_file(tmp_path, dtype, slope, inter):
    arr = random_array(dtype, seed=2)
    data = nifti_bytes(tmp_path, arr, spacing=(0.5, 0.75, 2.0))
    if slope is not None:
        data = patch_header(data, scl_slope=slope, scl_inter=inter)
    big = to_big_endian(data, dtype)
    assert big[:4] == (348).to_bytes(4, "big")
    path = write(tmp_path / "big.nii.gz", big)
    loaded = assert_same_as_sitk(path)
    if slope is None:
        assert np.array_equal(loaded.array, arr)


def rotation_direction():
    a, b = 0.3, -0.7
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_geometry_and_axis_order(tmp_path, suffix):
    arr = random_array("int16", shape=(3, 4, 5), seed=3)  # numpy (z, y, x)
    spacing, origin = (0.7, 0.8, 3.1), (-12.5, 33.25, 100.0)
    img = sitk_image(arr, spacing=spacing, origin=origin, direction=rotation_direction())
    path = str(tmp_path / f"geom{suffix}")
    sitk.WriteImage(img, path, useCompression=suffix.endswith(".gz"))
    loaded = assert_same_as_sitk(path)
    h = loaded.header
    assert h.size == (5, 4, 3) and h.size_zyx == (3, 4, 5) == loaded.array.shape
    assert np.allclose(h.spacing, spacing) and h.spacing_zyx == tuple(reversed(h.spacing))
    assert h.components == 1 and h.ndim == 3
    assert h.nbytes == loaded.array.nbytes
    assert np.allclose(np.array(h.direction).reshape(3, 3), np.array(rotation_direction()).reshape(3, 3),
                       atol=1e-6)
    assert read_header(path) == h


def test_uncompressed_nii_and_plain_bytes_named_gz(tmp_path):
    arr = random_array("int16", seed=4)
    plain = nifti_bytes(tmp_path, arr)
    assert_same_as_sitk(write(tmp_path / "plain.nii", plain))
    # nifticlib reads a non-gzip file named .nii.gz transparently; so do we
    raw_named_gz = tmp_path / "raw.nii.gz"
    raw_named_gz.write_bytes(plain)
    assert_same_as_sitk(raw_named_gz)


def test_multi_member_gzip_and_zero_padding(tmp_path):
    arr = random_array("float32", seed=5)
    plain = nifti_bytes(tmp_path, arr)
    two = gzip.compress(plain[:1000]) + gzip.compress(plain[1000:])
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(two)
    assert_same_as_sitk(path)
    path.write_bytes(gzip.compress(plain) + b"\0" * 64)
    assert np.array_equal(read_image(path).array, arr)


def test_two_and_four_dimensional_files(tmp_path):
    a2 = random_array("uint8", shape=(6, 7), seed=6)
    p2 = str(tmp_path / "img2d.nii.gz")
    sitk.WriteImage(sitk_image(a2), p2, useCompression=True)
    l2 = assert_same_as_sitk(p2)
    assert l2.header.ndim == 2 and l2.array.shape == (6, 7)

    a4 = random_array("int16", shape=(2, 3, 4, 5), seed=7)  # (t, z, y, x)
    p4 = str(tmp_path / "img4d.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(a4, isVector=False), p4, useCompression=True)
    l4 = assert_same_as_sitk(p4)
    assert l4.header.ndim == 4 and l4.array.shape == (2, 3, 4, 5)
    assert np.array_equal(l4.array, a4)

    # dim[0]=4 with a single volume: ITK (and therefore we) report 3D
    a3 = random_array("int16", shape=(3, 4, 5), seed=8)
    data = nifti_bytes(tmp_path, a3)
    data = patch_header(data, dim=[4, 5, 4, 3, 1, 1, 1, 1])
    l1 = assert_same_as_sitk(write(tmp_path / "t1.nii.gz", data))
    assert l1.header.ndim == 3


def test_vector_and_other_formats_fall_back_to_simpleitk(tmp_path):
    rgb = random_array("uint8", shape=(3, 4, 5, 3), seed=9)
    p = str(tmp_path / "rgb.nii.gz")
    sitk.WriteImage(sitk_image(rgb, is_vector=True), p, useCompression=True)
    loaded = assert_same_as_sitk(p, fast=False)
    assert loaded.header.components == 3 and loaded.array.shape == (3, 4, 5, 3)
    assert loaded.header.nbytes == rgb.nbytes
    for suffix in (".nrrd", ".mha"):
        arr = random_array("float32", seed=10)
        p = str(tmp_path / f"other{suffix}")
        sitk.WriteImage(sitk_image(arr, spacing=(1.5, 2.0, 2.5)), p, useCompression=True)
        loaded = assert_same_as_sitk(p, fast=False)
        assert np.array_equal(loaded.array, arr)


def test_named_file_is_read_not_its_uncompressed_sibling(tmp_path):
    # nifticlib reads the voxels of x.nii when asked for x.nii.gz if both exist; we do not.
    arr = random_array("int16", seed=11)
    gz = write(tmp_path / "x.nii.gz", nifti_bytes(tmp_path, arr))
    write(tmp_path / "x.nii", nifti_bytes(tmp_path, (arr // 2).astype(np.int16)))
    assert np.array_equal(read_image(gz).array, arr)
    assert not np.array_equal(sitk_array(gz), arr)  # documents SimpleITK's behaviour


# ------------------------------------------------------------------------------------------
# NaN / Inf
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_and_inf_are_kept_and_counted(tmp_path, dtype):
    arr = random_array(dtype, seed=12)
    arr[0, 0, 0], arr[1, 2, 3], arr[2, 3, 4] = np.nan, np.inf, -np.inf
    path = str(tmp_path / "nan.nii.gz")
    sitk.WriteImage(sitk_image(arr), path, useCompression=True)
    loaded = read_image(path)
    assert loaded.nonfinite_count == 3
    assert np.array_equal(loaded.array, arr, equal_nan=True)
    ref = sitk_array(path)
    bad = ~np.isfinite(arr)
    assert np.all(ref[bad] == 0)  # SimpleITK silently zeroes them: why we decode ourselves
    assert np.array_equal(ref[~bad], loaded.array[~bad])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_finite_voxels_whose_sum_overflows_are_not_counted_as_nonfinite(tmp_path, dtype):
    arr = np.full((4, 5, 6), np.finfo(dtype).max / 2, dtype=dtype)  # every sum of two overflows
    arr[0, 0, 0] = -1.5
    path = str(tmp_path / "huge.nii.gz")
    sitk.WriteImage(sitk_image(arr), path, useCompression=True)
    loaded = read_image(path)
    assert loaded.nonfinite_count == 0
    arr[1, 1, 1] = np.nan
    sitk.WriteImage(sitk_image(arr), path, useCompression=True)
    assert read_image(path).nonfinite_count == 1


def test_nan_with_scaling_stays_nan(tmp_path):
    arr = random_array("float32", seed=13)
    arr[1, 1, 1] = np.nan
    data = patch_header(nifti_bytes(tmp_path, arr), scl_slope=2.0, scl_inter=1.0)
    loaded = read_image(write(tmp_path / "nans.nii.gz", data))
    assert np.isnan(loaded.array[1, 1, 1]) and loaded.nonfinite_count == 1
    ref = sitk_array(tmp_path / "nans.nii.gz")
    mask = np.isfinite(arr)
    assert np.array_equal(ref[mask], loaded.array[mask])


# ------------------------------------------------------------------------------------------
# Broken files
def _outcome(path):
    try:
        return read_image(path).array
    except ImageReadError as exc:
        return exc.check


def test_inflate_in_small_pieces_gives_the_same_results(tmp_path, monkeypatch):
    """The inflate feeds and takes bounded pieces; with pieces of a few bytes every boundary
    (a member's end, a CRC trailer, padding) falls inside or between pieces."""
    arr = np.zeros((9, 10, 11), np.int16)
    arr[2:7, 3:8, 4:9] = random_array("int16", shape=(5, 5, 5), seed=31)  # mostly zeros: inflates a lot
    plain = nifti_bytes(tmp_path, arr)
    one = gzip.compress(plain)
    variants = {
        "one": one,
        "members": gzip.compress(plain[:500]) + gzip.compress(plain[500:1500]) + gzip.compress(plain[1500:]),
        "padded": one + b"\0" * 100,
        "garbage": one + b"\0\0junk",
        "crc": one[:-8] + bytes([one[-8] ^ 1]) + one[-7:],
        "short_member": gzip.compress(plain[:500]) + gzip.compress(plain[500:])[:-3],
    }
    for cut in (11, len(one) // 3, len(one) - 9, len(one) - 1):
        variants[f"cut{cut}"] = one[:cut]
    expected = {}
    for name, data in variants.items():
        (tmp_path / f"{name}.nii.gz").write_bytes(data)
        expected[name] = _outcome(tmp_path / f"{name}.nii.gz")
    assert isinstance(expected["one"], np.ndarray) and np.array_equal(expected["one"], arr)
    assert np.array_equal(expected["members"], arr) and np.array_equal(expected["padded"], arr)
    assert [expected[k] for k in ("garbage", "crc", "short_member")] == ["corrupt_file", "corrupt_file",
                                                                        "truncated_file"]
    for name in variants:  # the slab-by-slab reader: same arrays, same errors
        got = planes_outcome(tmp_path / f"{name}.nii.gz", 53)
        if isinstance(expected[name], np.ndarray):
            assert np.array_equal(got[1], expected[name]), name
        else:
            assert got == expected[name], name
    for in_piece, out_piece in ((1, 1), (3, 7), (64, 5), (5, 4096)):
        monkeypatch.setattr(imageio, "_IN_PIECE", in_piece)
        monkeypatch.setattr(imageio, "_OUT_PIECE", out_piece)
        for name in variants:
            got = _outcome(tmp_path / f"{name}.nii.gz")
            if isinstance(expected[name], np.ndarray):
                assert isinstance(got, np.ndarray) and np.array_equal(got, expected[name]), (name, in_piece)
            else:
                assert got == expected[name], (name, in_piece, out_piece)


# ------------------------------------------------------------------------------------------


@pytest.fixture
def valid_gz(tmp_path) -> bytes:
    arr = random_array("int16", shape=(6, 7, 8), seed=14)
    return gzip.compress(nifti_bytes(tmp_path, arr), compresslevel=6)


@pytest.mark.parametrize("cut", [1, 5, 10, 40, 150, 0.5, -9, -4, -1])
def test_truncated_gz_is_refused(tmp_path, valid_gz, cut):
    n = int(len(valid_gz) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(valid_gz) + cut)
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(valid_gz[:n])
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    assert ei.value.check in ("truncated_file", "corrupt_file")
    assert str(path) in str(ei.value)


def test_truncated_gz_message_and_simpleitk_pads(tmp_path, valid_gz):
    path = tmp_path / "half.nii.gz"
    path.write_bytes(valid_gz[: len(valid_gz) // 2])
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    assert ei.value.check == "truncated_file"
    assert "gzip stream ends after" in str(ei.value) and "bytes expected" in str(ei.value)
    sitk_array(path)  # SimpleITK reads it without complaint (zero padded): why we check


def test_truncated_uncompressed_nii(tmp_path):
    data = nifti_bytes(tmp_path, random_array("int16", seed=15))
    path = write(tmp_path / "cut.nii", data[:-10])
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    assert ei.value.check == "truncated_file"
    assert planes_outcome(path, 37) == "truncated_file"  # found at the end of the slab pass


def test_gzip_stream_complete_but_too_short(tmp_path):
    data = nifti_bytes(tmp_path, random_array("int16", seed=16))
    path = write(tmp_path / "short.nii.gz", data[:-10])  # valid gzip of a cut NIfTI
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    assert ei.value.check == "truncated_file"
    assert planes_outcome(path, 37) == "truncated_file"  # found at the end of the slab pass


def test_flipped_byte_in_deflate_stream(tmp_path, valid_gz):
    bad = bytearray(valid_gz)
    bad[len(bad) // 2] ^= 0x55
    path = tmp_path / "flip.nii.gz"
    path.write_bytes(bytes(bad))
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    assert ei.value.check == "corrupt_file"
    assert str(path) in str(ei.value)


def test_crc_and_length_mismatch(tmp_path, valid_gz):
    for offset in (-8, -2):  # CRC32, then ISIZE
        bad = bytearray(valid_gz)
        bad[offset] ^= 0x01
        path = tmp_path / "crc.nii.gz"
        path.write_bytes(bytes(bad))
        with pytest.raises(ImageReadError) as ei:
            read_image(path)
        assert ei.value.check == "corrupt_file"
        assert "CRC mismatch" in str(ei.value)


def test_trailing_garbage_after_gzip(tmp_path, valid_gz):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(valid_gz + b"not gzip at all")
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    assert ei.value.check == "corrupt_file"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    assert ei.value.check == "truncated_file" and "empty" in str(ei.value)
    with pytest.raises(ImageReadError):
        read_header(path)


@pytest.mark.parametrize("content", [b"hello, this is not an image\n" * 20, bytes(range(256)) * 4,
                                     b"\x1f\x8b" + b"\x00" * 100])
@pytest.mark.parametrize("name", ["junk.nii.gz", "junk.nii", "junk.nrrd"])
def test_not_an_image(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    assert ei.value.check in ("unreadable_file", "corrupt_file", "truncated_file")
    assert str(path) in str(ei.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    for fn in (read_image, read_header, stat_file, fingerprint_file):
        with pytest.raises(ImageReadError) as ei:
            fn(path)
        assert ei.value.check == "missing_file"
        assert ei.value.path == str(path)
    with pytest.raises(ImageReadError) as ei:
        read_image(tmp_path)  # a directory
    assert ei.value.check == "unreadable_file"


# ------------------------------------------------------------------------------------------
# Size limit
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_absurd_size_refused_before_allocation(tmp_path, suffix):
    data = nifti_bytes(tmp_path, random_array("int16", shape=(2, 2, 2)))
    data = patch_header(data, dim=[3, 4000, 4000, 4000, 1, 1, 1, 1])
    path = write(tmp_path / f"huge{suffix}", data)
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    assert time.perf_counter() - t0 < 1.0
    assert ei.value.check == "image_too_large"
    msg = str(ei.value)
    assert "4000 x 4000 x 4000" in msg and f"{DEFAULT_MAX_IMAGE_BYTES:,}" in msg and "max_bytes" in msg
    h = read_header(path)  # header-only read does not allocate voxels
    assert h.size == (4000, 4000, 4000) and h.nbytes == 2 * 4000**3


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_absurd_vox_offset_is_a_truncated_file_not_an_allocation(tmp_path, suffix):
    """Found by the fuzz test: a flipped byte in vox_offset (1.5e12) made read_image allocate
    1.38 TiB for the inflated bytes, and numpy's MemoryError escaped."""
    data = patch_header(nifti_bytes(tmp_path, random_array("int16", shape=(2, 3, 4))), vox_offset=1.5e12)
    path = write(tmp_path / f"offset{suffix}", data)
    with pytest.raises(ImageReadError) as whole:
        read_image(path)
    with pytest.raises(ImageReadError) as planes:
        with imageio.read_planes(path) as reader:
            for _ in reader.slabs(37):
                pass
    assert whole.value.check == planes.value.check == "truncated_file"
    assert str(path) in str(whole.value)


def test_max_bytes_option(tmp_path):
    arr = random_array("int16", shape=(4, 5, 6))
    path = str(tmp_path / "small.nii.gz")
    sitk.WriteImage(sitk_image(arr), path, useCompression=True)
    with pytest.raises(ImageReadError) as ei:
        read_image(path, max_bytes=arr.nbytes - 1)
    assert ei.value.check == "image_too_large"
    assert np.array_equal(read_image(path, max_bytes=arr.nbytes).array, arr)
    assert np.array_equal(read_image(path, max_bytes=None).array, arr)
    # the limit applies to the decoded array: int16 scaled to float32 doubles it
    data = patch_header(nifti_bytes(tmp_path, arr), scl_slope=2.0)
    scaled = write(tmp_path / "scaled.nii.gz", data)
    with pytest.raises(ImageReadError) as ei:
        read_image(scaled, max_bytes=arr.nbytes)
    assert ei.value.check == "image_too_large"


# ------------------------------------------------------------------------------------------
# Fingerprints
# ------------------------------------------------------------------------------------------


def test_fingerprint_and_stat(tmp_path, valid_gz):
    path = tmp_path / "fp.nii.gz"
    path.write_bytes(valid_gz)
    st = os.stat(path)
    assert stat_file(path) == (st.st_size, st.st_mtime_ns)
    fp = fingerprint_file(path)
    assert fp == FileFingerprint(str(path), len(valid_gz), st.st_mtime_ns,
                                 hashlib.sha256(valid_gz).hexdigest())
    loaded = read_image(path)
    assert loaded.fingerprint == fp
    assert isinstance(loaded.header, ImageHeader)
    rel = os.path.relpath(path)
    assert fingerprint_file(rel).path == rel  # path kept as given


# ------------------------------------------------------------------------------------------
# Fuzzing: never anything but a LoadedImage or an ImageReadError
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzzsrc")
    arr = random_array("float32", shape=(3, 4, 5), seed=17)
    arr[0, 0, 0] = np.nan
    plain = nifti_bytes(tmp, arr)
    return {".nii.gz": gzip.compress(plain), ".nii": plain}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    suffix=st.sampled_from([".nii.gz", ".nii"]),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=4),
    header_bias=st.booleans(),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_fuzz_flips_and_truncations(tmp_path, fuzz_sources, suffix, flips, header_bias, cut):
    data = bytearray(fuzz_sources[suffix])
    for where, xor in flips:
        # half the time aim at the first 400 bytes (gzip header + NIfTI header)
        limit = min(len(data), 400) if header_bias else len(data)
        data[int(where * limit)] ^= xor
    if cut is not None:
        data = data[: int(cut * len(data))]
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(bytes(data))
    try:
        loaded = read_image(path, max_bytes=1 << 24)
    except ImageReadError as exc:
        assert exc.check in ("truncated_file", "corrupt_file", "unreadable_file", "image_too_large", "invalid_geometry")
        assert str(path) in str(exc)
        with pytest.raises(ImageReadError) as planes_error:  # the slab reader refuses it the same way
            with imageio.read_planes(path, max_bytes=1 << 24) as reader:
                for _ in reader.slabs(37):
                    pass
        assert planes_error.value.check == exc.check
    else:
        assert isinstance(loaded, LoadedImage)
        assert loaded.array.size == np.prod(loaded.header.size) * loaded.header.components
        with imageio.read_planes(path, max_bytes=1 << 24) as reader:
            parts = [np.array(planes) for _, _, planes in reader.slabs(37)]
        assert np.array_equal(np.concatenate(parts).reshape(loaded.array.shape), loaded.array, equal_nan=True)
        assert reader.fingerprint == loaded.fingerprint
