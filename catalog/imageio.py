"""Reading images: the one place that knows file formats and axis order.

Conventions used throughout `catalog`:

* Arrays are numpy order **(z, y, x)** (for 2D (y, x), for 4D (t, z, y, x)): the C-order array
  ``sitk.GetArrayFromImage`` returns. Header geometry (``size``, ``spacing``, ``origin``) is ITK
  order **(x, y, z)**, exactly the doubles SimpleITK reports; ``*_zyx`` properties reverse it.
* Spacing and origin are in the units SimpleITK reports: millimetres for NIfTI (ITK converts
  headers stored in metres or microns to mm), taken as stored otherwise.

How `read_image` reads a ``.nii.gz`` (the common case):

1. the file's bytes are read once and hashed (sha256 of the bytes as stored, i.e. compressed);
2. the gzip stream is inflated here (ISA-L when available, about 2x faster than zlib), member by
   member, with its CRC32 and length trailer checked: SimpleITK reads a truncated file without
   error and pads it with zeros, so truncation and corruption are caught here instead;
3. geometry and pixel type come from SimpleITK's header read (``ReadImageInformation`` with the
   NIfTI ImageIO named, a few ms) so they are bit-identical to what SimpleITK gives;
4. the voxels are taken with ``np.frombuffer`` on the inflated bytes (no copy) and
   ``scl_slope``/``scl_inter`` are applied exactly as ITK's NiftiImageIO does (see `_itk_rescale`).

The result equals ``sitk.GetArrayFromImage(sitk.ReadImage(path))`` in dtype and values, except
that NaN/Inf voxels are kept (SimpleITK's NIfTI reader silently turns them into 0) and counted.
Anything this fast path does not fully understand (other formats, NIfTI-2, Analyze, two-file
NIfTI, vector/RGB/complex pixels, ...) is read by plain SimpleITK after the same integrity checks.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import stat
import struct
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from catalog.errors import ImageReadError

try:  # ISA-L inflates about 2x faster than zlib; same API (decompressobj, error)
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a dependency, zlib is the safety net
    import zlib as _zlib

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "FileFingerprint",
    "ImageHeader",
    "LoadedImage",
    "fingerprint_file",
    "read_header",
    "read_image",
    "read_planes",
    "ImagePlanes",
    "stat_file",
]

DEFAULT_MAX_IMAGE_BYTES = 8 * 1024**3

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_HEADER_BYTES = 348
_HEAD_BYTES = 540  # enough for a NIfTI-2 header too, so sizeof_hdr can be inspected
_DBL_EPS = sys.float_info.epsilon  # ITK compares scl_slope/scl_inter with double epsilon
_CHUNK = 1 << 20  # elements per block when rescaling / counting (bounds temporary memory)


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileFingerprint:
    """Identity of a file's content.

    ``path`` is the path as given (not resolved); ``sha256`` is the hex digest of the bytes exactly
    as stored on disk (the compressed bytes for ``.nii.gz``); ``mtime_ns`` is ``st_mtime_ns``.
    """

    path: str
    size_bytes: int
    mtime_ns: int
    sha256: str


def _stat_regular(path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageReadError(path, "file does not exist", check="missing_file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot stat file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(path, "not a regular file")
    return st


def stat_file(path) -> tuple[int, int]:
    """Return ``(size_bytes, mtime_ns)`` without reading the file.

    Raises ImageReadError(check="missing_file") if it does not exist, "unreadable_file" if it is
    not a regular file or cannot be stat'ed.
    """
    p = os.fspath(path)
    st = _stat_regular(p)
    return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def _open_regular(path: str):
    """Open a regular file for reading; every failure is an ImageReadError naming the file."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImageReadError(path, "not a regular file")
            yield fh, st
    except FileNotFoundError:
        raise ImageReadError(path, "file does not exist", check="missing_file") from None
    except IsADirectoryError:
        raise ImageReadError(path, "not a regular file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file: {exc.strerror or exc}") from None


def _read_bytes(path: str) -> tuple[np.ndarray, int]:
    """Read the whole file once into a uint8 array; return it and the mtime_ns of the same open
    file. A numpy array rather than `bytes`: numpy asks the kernel for huge pages, which makes
    the first touch of a large buffer several times cheaper (page faults were a fifth of ingest)."""
    with _open_regular(path) as (fh, st):
        data = np.empty(st.st_size, dtype=np.uint8)
        view, filled = memoryview(data), 0
        while filled < data.size:
            n = fh.readinto(view[filled:])
            if not n:
                break
            filled += n
        more = fh.read()  # the file grew since fstat
        if filled < data.size or more:
            data = np.concatenate([data[:filled], np.frombuffer(more, dtype=np.uint8)])
        return data, st.st_mtime_ns


def _fingerprint(path: str, data, mtime_ns: int) -> FileFingerprint:
    return FileFingerprint(path, len(data), mtime_ns, hashlib.sha256(data).hexdigest())


def fingerprint_file(path) -> FileFingerprint:
    """Hash the file's bytes as stored (no decompression, no decoding)."""
    p = os.fspath(path)
    with _open_regular(p) as (fh, st):
        digest = hashlib.file_digest(fh, "sha256")
        return FileFingerprint(p, fh.tell(), st.st_mtime_ns, digest.hexdigest())


# --------------------------------------------------------------------------------------------
# Header (SimpleITK)
# --------------------------------------------------------------------------------------------

_SCALAR_PIXEL_IDS = {
    sitk.sitkUInt8: "uint8", sitk.sitkInt8: "int8",
    sitk.sitkUInt16: "uint16", sitk.sitkInt16: "int16",
    sitk.sitkUInt32: "uint32", sitk.sitkInt32: "int32",
    sitk.sitkUInt64: "uint64", sitk.sitkInt64: "int64",
    sitk.sitkFloat32: "float32", sitk.sitkFloat64: "float64",
    sitk.sitkComplexFloat32: "complex64", sitk.sitkComplexFloat64: "complex128",
}
_VECTOR_PIXEL_IDS = {
    sitk.sitkVectorUInt8: "uint8", sitk.sitkVectorInt8: "int8",
    sitk.sitkVectorUInt16: "uint16", sitk.sitkVectorInt16: "int16",
    sitk.sitkVectorUInt32: "uint32", sitk.sitkVectorInt32: "int32",
    sitk.sitkVectorUInt64: "uint64", sitk.sitkVectorInt64: "int64",
    sitk.sitkVectorFloat32: "float32", sitk.sitkVectorFloat64: "float64",
}


@dataclass(frozen=True)
class ImageHeader:
    """What SimpleITK's header read reports, before any voxel is decoded.

    ``size``, ``spacing`` and ``origin`` are ITK order (x, y, z[, t]); ``direction`` is the
    row-major direction-cosine matrix (9 values for 3D). Values are exactly the doubles of
    ``GetSize()/GetSpacing()/GetOrigin()/GetDirection()``; spacing is in mm for NIfTI.
    ``ndim`` is the image dimension SimpleITK gives (ITK drops trailing length-1 dimensions beyond
    the third, so a 4D file with one volume is 3D). ``pixel_type`` is the numpy dtype name of the
    array ``GetArrayFromImage`` would return (after ITK's scl_slope promotion to float32);
    ``components`` is the number of components per pixel (1 for scalar images).
    """

    path: str
    ndim: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_type: str
    components: int

    @property
    def size_zyx(self) -> tuple[int, ...]:
        """Array shape, numpy order (z, y, x) for 3D (reversed ITK size)."""
        return tuple(reversed(self.size))

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        """Voxel spacing in numpy order (z, y, x) for 3D, mm for NIfTI."""
        return tuple(reversed(self.spacing))

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded voxel array (all components)."""
        n = math.prod(self.size) * np.dtype(self.pixel_type).itemsize
        if np.dtype(self.pixel_type).kind != "c":  # complex components live in the dtype
            n *= max(self.components, 1)
        return n


def _imageio_for(path: str) -> str:
    """The ImageIO to name explicitly (skips SimpleITK's probing of ~20 IOs); '' = let it probe."""
    low = path.lower()
    if low.endswith((".nii", ".nii.gz", ".hdr", ".img", ".img.gz", ".nia")):
        return "NiftiImageIO"
    if low.endswith((".nrrd", ".nhdr")):
        return "NrrdImageIO"
    if low.endswith((".mha", ".mhd")):
        return "MetaImageIO"
    return ""


def _sitk_message(exc: BaseException) -> str:
    """The informative line of a SimpleITK exception (they are multi-line with source paths)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "ERROR" in ln or "error" in ln:
            return ln.split("):", 1)[-1].strip()[:400]
    return (lines[-1] if lines else type(exc).__name__)[:400]


def _read_header(path: str) -> tuple[ImageHeader, int]:
    """SimpleITK header read; returns the header and SimpleITK's pixel id."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    io = _imageio_for(path)
    if io:
        reader.SetImageIO(io)
    try:
        reader.ReadImageInformation()
        size = tuple(int(s) for s in reader.GetSize())
        # `+ 0.0` turns -0.0 into 0.0: the header-only read reports -0.0 in direction matrices
        # where sitk.ReadImage (what nnU-Net v1 pickles) reports 0.0; otherwise they agree exactly.
        spacing = tuple(float(s) + 0.0 for s in reader.GetSpacing())
        origin = tuple(float(s) + 0.0 for s in reader.GetOrigin())
        direction = tuple(float(s) + 0.0 for s in reader.GetDirection())
        pixel_id = reader.GetPixelID()
        components = int(reader.GetNumberOfComponents())
        ndim = int(reader.GetDimension())
    except Exception as exc:  # SimpleITK raises RuntimeError; be defensive about the rest
        raise ImageReadError(path, f"SimpleITK cannot read the header: {_sitk_message(exc)}") from None
    pixel_type = _SCALAR_PIXEL_IDS.get(pixel_id) or _VECTOR_PIXEL_IDS.get(pixel_id)
    if pixel_type is None:
        raise ImageReadError(path, f"unsupported pixel type {sitk.GetPixelIDValueAsString(pixel_id)}")
    header = ImageHeader(path, ndim, size, spacing, origin, direction, pixel_type, components)
    return header, pixel_id


# Raw NIfTI header fields that SimpleITK turns into geometry: (offset, struct code, count).
_NIFTI_GEOMETRY = {
    1: {"dim": (40, "h", 8), "pixdim": (76, "f", 8), "qform_code": (252, "h", 1), "sform_code": (254, "h", 1),
        "quatern": (256, "f", 3), "qoffset": (268, "f", 3), "srow": (280, "f", 12)},
    2: {"dim": (16, "q", 8), "pixdim": (104, "d", 8), "qform_code": (344, "i", 1), "sform_code": (348, "i", 1),
        "quatern": (352, "d", 3), "qoffset": (376, "d", 3), "srow": (400, "d", 12)},
}


def nifti_header_problems(head: bytes) -> list[str]:
    """Geometry fields of a raw NIfTI-1/-2 header (the decompressed first bytes of the file) that
    SimpleITK must not be given: non-finite or non-positive voxel sizes, non-finite qform or sform
    parameters in a transform the header declares (code > 0).

    ITK reads such headers without error but silently makes something up (a NaN or 0 pixdim
    becomes spacing 1, an infinite qoffset origin 0), and an infinite offset in a degenerate sform
    makes its SVD loop forever. Returns [] for anything that is not a NIfTI header (left to the
    reader to refuse)."""
    version, order = None, None
    for bo in "<>":
        if len(head) >= 540 and struct.unpack_from(bo + "i", head, 0)[0] == 540:
            version, order = 2, bo
            break
    if version is None and len(head) >= 348:
        for bo in "<>":  # nifticlib picks the byte order that makes dim[0] 1..7
            if 1 <= struct.unpack_from(bo + "h", head, 40)[0] <= 7:
                version, order = 1, bo
                break
    if version is None:
        return []
    fields = {}
    for name, (offset, code, count) in _NIFTI_GEOMETRY[version].items():
        values = struct.unpack_from(f"{order}{count}{code}", head, offset)
        fields[name] = values if count > 1 else values[0]
    problems = []
    ndim = fields["dim"][0]
    for axis in range(1, min(ndim, 3) + 1):
        value = fields["pixdim"][axis]
        if not (math.isfinite(value) and value > 0):
            problems.append(f"pixdim[{axis}] (voxel size) = {value:g}, expected a finite number > 0")
    if fields["qform_code"] > 0:
        names = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "pixdim[0] (qfac)")
        for name, value in zip(names, (*fields["quatern"], *fields["qoffset"], fields["pixdim"][0])):
            if not math.isfinite(value):
                problems.append(f"{name} = {value:g} with qform_code {fields['qform_code']}, expected a finite number")
    if fields["sform_code"] > 0:
        for index, value in enumerate(fields["srow"]):
            if not math.isfinite(value):
                problems.append(f"srow_{'xyz'[index // 4]}[{index % 4}] = {value:g} with sform_code "
                                f"{fields['sform_code']}, expected a finite number")
    return problems


def _refuse_bad_geometry(path: str, head: bytes) -> None:
    problems = nifti_header_problems(head)
    if problems:
        raise ImageReadError(path, "; ".join(problems), check="invalid_geometry")


def read_header(path) -> ImageHeader:
    """Read only the header (SimpleITK ``ReadImageInformation``, NIfTI ImageIO named; ~ms).

    No voxel data is read or allocated. Raises ImageReadError ("missing_file", "unreadable_file").
    """
    p = os.fspath(path)
    _stat_regular(p)
    with open(p, "rb") as f:
        start = f.read(1 << 16)
    _refuse_bad_geometry(p, _inflate_head(start) if start.startswith(_GZIP_MAGIC) else start[:_HEAD_BYTES])
    return _read_header(p)[0]


# --------------------------------------------------------------------------------------------
# gzip
# --------------------------------------------------------------------------------------------


def _inflate_head(data: bytes, nbytes: int = _HEAD_BYTES) -> bytes:
    """The first `nbytes` inflated bytes (for the NIfTI header); never raises, may be short."""
    mv = memoryview(data)
    feed = 1 << 16
    while True:
        # Feed only a prefix: with max_length the decompressor copies all unread input into
        # `unconsumed_tail`, which would cost a full copy of the file.
        try:
            d = _zlib.decompressobj(31)
            head = d.decompress(mv[:feed], nbytes)
        except Exception:
            return b""  # the full inflate reports what is wrong
        if len(head) >= nbytes or d.eof or feed >= len(data):
            return head
        feed *= 8


_IN_PIECE = 1 << 20  # compressed bytes fed per call
_MAX_DEFLATE_RATIO = 1032  # deflate's largest inflated / compressed size (258 bytes per 2 bits)
# Inflated bytes taken per call: a piece small enough to be still in the core's cache when it is
# copied on. With 4 MiB pieces ingest took 2-5 % longer with two processes (side by side on the
# benchmark tasks, on a VM whose L2 cache was given as 4 MiB: CT 2.94 s against 2.80 s, MR 2.01 s against
# 1.96 s). On a VM with 1 MiB of L2 per core, 256 KiB pieces and slabs were slower (benchmarks/NOTES.md).
_OUT_PIECE = 1 << 20


class _MemorySource:
    """Compressed bytes already in memory, handed out in pieces."""

    def __init__(self, data):
        self.mv = memoryview(data).cast("B")
        self.pos = 0

    def read(self, n: int):
        piece = self.mv[self.pos:self.pos + n]
        self.pos += len(piece)
        return piece

    def unread(self, data) -> None:  # only ever the tail of what was read last
        self.pos -= len(data)


class _FileSource:
    """An open file read in pieces and hashed as it is read (sha256 of every byte, once)."""

    def __init__(self, fh):
        self.fh = fh
        self.hasher = hashlib.sha256()
        self.size = 0
        self.pushed = b""

    def read(self, n: int) -> bytes:
        if self.pushed:
            piece, self.pushed = self.pushed[:n], self.pushed[n:]
            return piece
        piece = self.fh.read(n)
        self.hasher.update(piece)
        self.size += len(piece)
        return piece

    def unread(self, data) -> None:
        self.pushed = bytes(data) + self.pushed

    def drain(self) -> None:
        while self.read(_IN_PIECE):
            pass


def _inflate_pieces(path: str, source, expected: int | None, budget: int | None):
    """Inflate a (possibly multi-member) gzip stream from `source`, checking every member's CRC32
    and ISIZE; yields the inflated bytes in pieces of at most _OUT_PIECE bytes and raises
    ImageReadError (truncated_file / corrupt_file) where the stream is cut short or corrupted.

    `expected` (bytes the NIfTI header needs, if known) only improves messages; `budget` caps the
    inflated size so a corrupt or hostile stream cannot run without bound.
    """
    total = 0
    member = 0
    while True:
        member += 1
        where = f"gzip member {member}" if member > 1 else "gzip stream"
        d = _zlib.decompressobj(31)  # 31 = gzip wrapper: zlib/ISA-L check CRC32 and ISIZE
        while not d.eof:
            piece = d.unconsumed_tail or source.read(_IN_PIECE)  # empty at the end: drains
            try:
                chunk = d.decompress(piece, _OUT_PIECE)
            except _zlib.error as exc:
                msg = str(exc)
                if "check" in msg.lower() or "checksum" in msg.lower():
                    raise ImageReadError(
                        path,
                        f"{where}: CRC mismatch (CRC32/length trailer does not match the inflated "
                        f"data; the file is corrupted) [{msg}]",
                        check="corrupt_file",
                    ) from None
                raise ImageReadError(path, f"{where} is corrupted: {msg}", check="corrupt_file") from None
            except (ValueError, OverflowError, MemoryError) as exc:
                raise ImageReadError(path, f"cannot inflate gzip stream: {exc}", check="corrupt_file") from None
            if budget is not None and total + len(chunk) > budget:
                raise ImageReadError(
                    path,
                    f"gzip stream inflates to more than {budget} bytes"
                    + (f" although the header needs only {expected}" if expected is not None else ""),
                    check="corrupt_file",
                )
            total += len(chunk)
            if chunk:
                yield chunk
            elif not piece:
                break  # no input left and nothing buffered: the stream never ended
        if not d.eof:  # all input consumed, no end-of-stream/trailer: the file was cut short
            if expected is not None and total < expected:
                msg = f"gzip stream ends after {total} of the {expected} bytes expected"
            elif expected is not None:
                msg = (f"gzip stream ends after all {total} expected bytes but without its "
                       "CRC32/length trailer")
            else:
                msg = f"gzip stream ends after {total} bytes without its end marker and CRC trailer"
            raise ImageReadError(path, f"truncated file: {msg}", check="truncated_file")
        if d.unused_data:
            source.unread(d.unused_data)  # read beyond the member's end
        following = bytes(source.read(2))
        if not following:
            return
        if following == _GZIP_MAGIC:  # another gzip member (concatenated .gz files)
            source.unread(following)
            continue
        rest, zeros = len(following), not any(following)
        while piece := source.read(_IN_PIECE):
            rest += len(piece)
            zeros = zeros and not np.any(np.frombuffer(piece, dtype=np.uint8))
        if zeros:  # zero padding after the last member
            return
        raise ImageReadError(path, f"{rest} bytes of trailing garbage after the gzip stream", check="corrupt_file")


def _inflate(path: str, data, out: np.ndarray | None, expected: int | None, budget: int | None) -> int:
    """Inflate the gzip file held in `data` (see `_inflate_pieces`) into `out` (a uint8 array at
    least `budget` long), or only count the bytes when `out` is None (the integrity check before
    a SimpleITK read); return the inflated length."""
    total = 0
    for chunk in _inflate_pieces(path, _MemorySource(data), expected, budget):
        if out is not None:
            if total + len(chunk) > out.size:  # cannot happen for deflate (_MAX_DEFLATE_RATIO)
                raise ImageReadError(path, f"gzip stream inflates to more than {out.size} bytes",
                                     check="corrupt_file")
            out[total:total + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        total += len(chunk)
    return total


# --------------------------------------------------------------------------------------------
# NIfTI-1 raw header
# --------------------------------------------------------------------------------------------

# NIfTI datatype code -> (bytes per voxel, numpy kind code or None if not decoded here)
_NIFTI_TYPES = {
    2: (1, "u1"), 4: (2, "i2"), 8: (4, "i4"), 16: (4, "f4"), 64: (8, "f8"),
    256: (1, "i1"), 512: (2, "u2"), 768: (4, "u4"), 1024: (8, "i8"), 1280: (8, "u8"),
    32: (8, None), 128: (3, None), 1536: (16, None), 1792: (16, None), 2048: (32, None),
    2304: (4, None),
}
_INTENT_GENMATRIX, _INTENT_SYMMATRIX, _INTENT_VECTOR = 1004, 1005, 1007


def _fixed_float(x: float) -> float:
    """nifticlib's FIXED_FLOAT: a non-finite scl_slope/scl_inter is read as 0."""
    return x if math.isfinite(x) else 0.0


@dataclass(frozen=True)
class _RawNifti:
    byteorder: str  # '<' or '>'
    dims: tuple[int, ...]  # dim[1..dim[0]], x fastest
    datatype: int
    nbyper: int
    kind: str | None  # numpy type code ('i2', 'f4', ...) or None if not decoded here
    vox_offset: int
    intent_code: int
    slope: float  # as ITK uses it (after FIXED_FLOAT and the "|slope| < eps -> 1" rule)
    inter: float

    @property
    def nvox(self) -> int:
        return math.prod(self.dims)

    @property
    def data_end(self) -> int:
        """Bytes the file (inflated) must hold: voxels end here."""
        return self.vox_offset + self.nvox * self.nbyper

    @property
    def decode_bytes(self) -> int:
        """Memory needed to decode the voxels: stored or returned size, whichever is larger."""
        out_itemsize = self.out_dtype.itemsize if self.out_dtype is not None else self.nbyper
        return self.nvox * max(out_itemsize, self.nbyper)

    @property
    def must_rescale(self) -> bool:
        # itk::NiftiImageIO::MustRescale (double epsilon)
        return abs(self.slope) > _DBL_EPS and (
            abs(self.slope - 1.0) > _DBL_EPS or abs(self.inter) > _DBL_EPS
        )

    @property
    def out_dtype(self) -> np.dtype | None:
        """dtype SimpleITK returns: integer voxels that must be rescaled are promoted to float32."""
        if self.kind is None:
            return None
        dt = np.dtype(self.kind)
        if self.must_rescale and dt.kind in "iu":
            return np.dtype(np.float32)
        return dt


def _parse_nifti1(head: bytes) -> _RawNifti | None:
    """Parse a single-file NIfTI-1 header ('n+1'); None if it is anything else or looks bad."""
    if len(head) < _NIFTI1_HEADER_BYTES:
        return None
    for bo in "<>":  # nifticlib decides byte order by dim[0] in 1..7, then checks sizeof_hdr
        (sizeof_hdr,) = struct.unpack_from(bo + "i", head, 0)
        dim = struct.unpack_from(bo + "8h", head, 40)
        if sizeof_hdr == _NIFTI1_HEADER_BYTES and 1 <= dim[0] <= 7:
            break
    else:
        return None
    if head[344:348] != b"n+1\x00":  # Analyze / two-file NIfTI: leave to SimpleITK
        return None
    dims = tuple(dim[1 : dim[0] + 1])
    if any(d < 1 for d in dims):
        return None
    intent_code, datatype = struct.unpack_from(bo + "hh", head, 68)
    vox_offset, slope, inter = struct.unpack_from(bo + "3f", head, 108)
    if datatype not in _NIFTI_TYPES:
        return None
    if not (math.isfinite(vox_offset) and vox_offset.is_integer() and vox_offset >= 352):
        return None
    nbyper, kind = _NIFTI_TYPES[datatype]
    slope, inter = _fixed_float(slope), _fixed_float(inter)
    if abs(slope) < _DBL_EPS:  # ITK: a zero (or unusable) slope means "no scaling"
        slope = 1.0
    return _RawNifti(bo, dims, datatype, nbyper, kind, int(vox_offset), intent_code, slope, inter)


def _itk_rescale(raw: np.ndarray, slope: float, inter: float, out_dtype: np.dtype) -> np.ndarray:
    """Apply scl_slope/scl_inter bit-for-bit like itk::NiftiImageIO::Read.

    ITK first casts integer voxels to float32 (CastCopy), then for each voxel computes
    ``static_cast<T>(double(v) * slope + intercept)`` with T the output type (float32 for
    integer or float32 voxels, float64 for float64 voxels), slope and intercept being the
    header's float32 values widened to double. Done in blocks to bound temporary memory.
    """
    flat = raw.reshape(-1)
    out = np.empty(flat.shape, dtype=out_dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(0, flat.size, _CHUNK):
            blk = flat[i : i + _CHUNK]
            if out_dtype == np.float32:
                blk = blk.astype(np.float32, copy=False)  # ITK's CastCopy<T> to float
            tmp = blk.astype(np.float64)
            tmp *= slope
            tmp += inter
            out[i : i + _CHUNK] = tmp  # double -> float32 rounds to nearest, like static_cast
    return out.reshape(raw.shape)


def _count_nonfinite(arr: np.ndarray) -> int:
    if arr.dtype.kind not in "fc" or arr.size == 0:
        return 0
    with np.errstate(over="ignore", invalid="ignore"):
        # A finite sum means every voxel is finite (the cheap common case: one pass in the
        # array's own dtype, about 2.5x faster than summing float32 in float64). An infinite sum
        # of finite voxels (overflow) just falls through to the exact count below.
        if np.isfinite(np.add.reduce(arr.reshape(-1))):
            return 0
    flat = arr.reshape(-1)
    return int(sum(np.count_nonzero(~np.isfinite(flat[i : i + _CHUNK]))
                   for i in range(0, flat.size, _CHUNK)))


# --------------------------------------------------------------------------------------------
# read_image
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image.

    ``array`` is numpy order (z, y, x) (2D: (y, x); 4D: (t, z, y, x); vector pixels add a last
    component axis), dtype and values identical to ``sitk.GetArrayFromImage(sitk.ReadImage(path))``
    except that NaN/Inf voxels are kept as stored (SimpleITK turns them into 0).
    The array may be **read-only** (a zero-copy view of the inflated bytes): copy before writing.
    ``fingerprint`` hashes the same bytes that were decoded; ``nonfinite_count`` counts NaN + Inf
    voxels of ``array`` (0 for integer images; for a NIfTI file that needed the SimpleITK
    fallback, e.g. vector pixels or NIfTI-2, SimpleITK has already turned them into 0).
    """

    header: ImageHeader
    array: np.ndarray
    fingerprint: FileFingerprint
    nonfinite_count: int


def _too_large(path: str, what: str, nbytes: int, max_bytes: int) -> ImageReadError:
    return ImageReadError(
        path,
        f"image too large: the header describes {what} = {nbytes:,} bytes decoded, more than the "
        f"limit of {max_bytes:,} bytes; raise the limit with `catalog ingest --max-image-gb` "
        "(read_image(..., max_bytes=N) in Python)",
        check="image_too_large",
    )


def _truncated(path: str, where: str, length: int, raw: _RawNifti) -> ImageReadError:
    return ImageReadError(
        path, f"truncated file: {where} {length} bytes but the header needs {raw.data_end} "
        f"(vox_offset {raw.vox_offset} + {raw.nvox} voxels x {raw.nbyper} bytes)", check="truncated_file")


def _out_of_memory(path: str) -> ImageReadError:
    return ImageReadError(path, "not enough memory to decode the image", check="image_too_large")


def _sitk_read_array(path: str, io: str) -> np.ndarray:
    """Fallback: plain SimpleITK read. Returns a copy (no view outliving its sitk.Image)."""

    def read(p: str) -> np.ndarray:
        img = sitk.ReadImage(p, imageIO=io) if io else sitk.ReadImage(p)
        return sitk.GetArrayFromImage(img)  # copies: the array does not depend on `img`

    try:
        if path.lower().endswith(".gz") and os.path.exists(path[:-3]):
            # nifticlib silently reads the voxels of 'x.nii' when asked for 'x.nii.gz' if both
            # exist; read through a private link so SimpleITK sees only the named file.
            with tempfile.TemporaryDirectory(prefix="catalog-imageio-") as tmp:
                link = os.path.join(tmp, os.path.basename(path))
                os.symlink(os.path.abspath(path), link)
                return read(link)
        return read(path)
    except MemoryError:
        raise _out_of_memory(path) from None
    except Exception as exc:
        raise ImageReadError(path, f"SimpleITK cannot read the image: {_sitk_message(exc)}") from None


def _decoded_here(raw: _RawNifti, header: ImageHeader, pixel_id: int) -> bool:
    """Whether this module decodes the voxels itself: a scalar NIfTI-1 image whose raw header
    agrees with SimpleITK's reading of it (anything else is left to SimpleITK)."""
    return (raw.kind is not None
            and raw.intent_code not in (_INTENT_GENMATRIX, _INTENT_SYMMATRIX, _INTENT_VECTOR)
            and pixel_id in _SCALAR_PIXEL_IDS
            and header.components == 1
            and header.pixel_type == raw.out_dtype.name
            and math.prod(header.size) == raw.nvox)


def read_image(path, *, max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES) -> LoadedImage:
    """Read an image file once: fingerprint, integrity checks, header, voxels.

    Returns a `LoadedImage` whose array is numpy order (z, y, x) (possibly read-only, see
    `LoadedImage`). Raises `ImageReadError` for every problem with the file, with ``check`` one of
    "missing_file", "truncated_file", "corrupt_file", "image_too_large", "unreadable_file".
    Images that are not 3D are returned (``header.ndim`` says what they are). ``max_bytes``
    refuses, before allocating, images whose decoded array would exceed it (None: no limit).
    """
    p = os.fspath(path)
    data, mtime_ns = _read_bytes(p)
    fingerprint = _fingerprint(p, data, mtime_ns)
    if not data.size:
        raise ImageReadError(p, "truncated file: the file is empty (0 bytes)", check="truncated_file")

    io = _imageio_for(p)
    start = bytes(data[:_HEAD_BYTES])
    is_gzip = start.startswith(_GZIP_MAGIC) or start == _GZIP_MAGIC[:1]  # 1 byte: cut gzip
    head = _inflate_head(data) if is_gzip else start
    raw = None
    if io == "NiftiImageIO":
        # nifticlib (gzopen) reads plain bytes in a .nii.gz too, so sniff the content, not the name;
        # before SimpleITK ever sees the header: it silently invents some geometry, hangs on other
        _refuse_bad_geometry(p, head)
        raw = _parse_nifti1(head)

    # Refuse absurd sizes from the raw header before inflating anything big.
    if raw is not None and max_bytes is not None and raw.decode_bytes > max_bytes:
        shape = " x ".join(str(d) for d in raw.dims)
        raise _too_large(p, f"{shape} voxels of {raw.nbyper} bytes (NIfTI datatype "
                            f"{raw.datatype})", raw.decode_bytes, max_bytes)

    if is_gzip:
        # Decoded here only when this module understands the header; otherwise SimpleITK decodes
        # the file after this integrity check, which then only counts the inflated bytes.
        if raw is not None:
            budget = raw.data_end + (1 << 20)
            # No more than the stream can inflate to: a corrupt vox_offset (a float in the
            # header) must not make this allocate terabytes. A failed huge allocation also
            # leaves glibc's heap unable to reuse freed blocks for the rest of the process.
            buf = np.empty(min(budget, _MAX_DEFLATE_RATIO * data.size + (1 << 20)), dtype=np.uint8)
        else:
            budget = 2 * max_bytes + (64 << 20) if max_bytes is not None else None
            buf = None
        length = _inflate(p, data, buf, raw.data_end if raw is not None else None, budget)
        del data  # the compressed bytes are not needed any more
        buf = buf[:length] if buf is not None else None
        where = "the decompressed data holds"
    else:
        buf = data
        length = data.size
        where = "the file holds"
    if io == "NiftiImageIO" and length < _NIFTI1_HEADER_BYTES and (
        length < 4 or head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")
    ):  # starts like a NIfTI-1 header (sizeof_hdr = 348) but ends inside it
        raise ImageReadError(
            p, f"truncated file: {where} only {length} bytes, the NIfTI-1 header alone needs "
            f"{_NIFTI1_HEADER_BYTES}", check="truncated_file")
    if raw is not None and length < raw.data_end:
        raise _truncated(p, where, length, raw)

    header, pixel_id = _read_header(p)
    if max_bytes is not None and header.nbytes > max_bytes:
        what = " x ".join(str(s) for s in header.size) + f" {header.pixel_type}"
        if header.components > 1:
            what += f" x {header.components} components"
        raise _too_large(p, what, header.nbytes, max_bytes)

    fast = raw is not None and _decoded_here(raw, header, pixel_id)
    try:
        if fast:
            # NIfTI stores x fastest, so C-order (z, y, x) over the same bytes is the same memory.
            arr = np.frombuffer(buf, dtype=np.dtype(raw.kind).newbyteorder(raw.byteorder),
                                count=raw.nvox, offset=raw.vox_offset)
            if not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))
            arr = arr.reshape(header.size_zyx)
            if raw.must_rescale:
                arr = _itk_rescale(arr, raw.slope, raw.inter, raw.out_dtype)
        else:
            arr = _sitk_read_array(p, io)
    except MemoryError:
        raise _out_of_memory(p) from None
    return LoadedImage(header, arr, fingerprint, _count_nonfinite(arr))


# --------------------------------------------------------------------------------------------
# read_planes: the same decode, slab by slab
# --------------------------------------------------------------------------------------------


class ImagePlanes:
    """An image decoded slab by slab of whole z-planes, never whole (see `read_planes`).

    ``header`` is known at once. Iterate `slabs()` once: it yields ``(z0, z1, planes)`` with
    ``planes`` the (z1 - z0, y, x) array of planes z0..z1, values and dtype exactly as
    `read_image` gives them, valid only until the next slab. When the iteration has ended, the
    file's end has been checked (CRC, length, trailing bytes) and ``fingerprint`` and
    ``nonfinite_count`` are set; a problem found on the way raises ImageReadError like
    `read_image`. Files the fast NIfTI-1 path does not cover, or that are not 3D, are read whole
    by `read_image` and handed out in slabs of that array.
    """

    def __init__(self, path, *, max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES):
        self.path = p = os.fspath(path)
        self.max_bytes = max_bytes
        self.fingerprint: FileFingerprint | None = None
        self.nonfinite_count: int | None = None
        self._loaded: LoadedImage | None = None
        self._fh = None
        try:
            self._open_stream()
        except (ImageReadError, OSError):
            self._close()
        if self._fh is None:  # anything unusual: the whole-file reader reports it exactly
            self._loaded = read_image(p, max_bytes=max_bytes)
            self.header = self._loaded.header

    def _open_stream(self) -> None:
        p = self.path
        if _imageio_for(p) != "NiftiImageIO":
            return
        fh = open(p, "rb")  # noqa: SIM115 - closed by slabs() or _close()
        self._fh = fh
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError(p, "not a regular file")
        self._mtime_ns = st.st_mtime_ns
        source = _FileSource(fh)
        first = source.read(1 << 16)
        is_gzip = first[:2] == _GZIP_MAGIC
        head = _inflate_head(first) if is_gzip else first[:_HEAD_BYTES]
        source.unread(first)
        if nifti_header_problems(head):
            raise ImageReadError(p, "invalid geometry")  # read_image says what exactly
        raw = _parse_nifti1(head)
        if raw is None or raw.kind is None or len(raw.dims) != 3:
            raise ImageReadError(p, "not a 3D NIfTI-1 image this module decodes")
        budget = raw.data_end + (1 << 20)
        if self.max_bytes is not None and raw.decode_bytes > self.max_bytes:
            raise ImageReadError(p, "too large")
        header, pixel_id = _read_header(p)
        fast = (_decoded_here(raw, header, pixel_id) and header.ndim == 3
                and (self.max_bytes is None or header.nbytes <= self.max_bytes))
        if not fast:
            raise ImageReadError(p, "not for the fast path")
        self.header, self._raw, self._source, self._is_gzip, self._budget = header, raw, source, is_gzip, budget

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ImagePlanes:
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def slabs(self, slab_voxels: int = 1 << 22):
        if self._loaded is not None:
            array = self._loaded.array
            step = max(1, slab_voxels // max(1, math.prod(array.shape[1:])))
            for z0 in range(0, array.shape[0], step):
                yield z0, min(z0 + step, array.shape[0]), array[z0:z0 + step]
            self.fingerprint, self.nonfinite_count = self._loaded.fingerprint, self._loaded.nonfinite_count
            return
        try:
            yield from self._decode(slab_voxels)
        except MemoryError:
            raise _out_of_memory(self.path) from None
        finally:
            self._close()

    def _decode(self, slab_voxels: int):
        p, raw = self.path, self._raw
        nz, ny, nx = raw.dims[2], raw.dims[1], raw.dims[0]
        plane_bytes = ny * nx * raw.nbyper
        step = max(1, slab_voxels // (ny * nx))
        stored = np.dtype(raw.kind).newbyteorder(raw.byteorder)
        buffer = np.empty(step * plane_bytes, dtype=np.uint8)
        if self._is_gzip:
            pieces = _inflate_pieces(p, self._source, raw.data_end, self._budget)
        else:
            pieces = iter(lambda: self._source.read(_IN_PIECE), b"")
        position = 0  # in the decoded stream
        z0 = filled = 0
        nonfinite = 0
        for piece in pieces:
            view = memoryview(piece).cast("B")
            start = max(0, raw.vox_offset - position)
            position += len(view)
            while start < len(view) and z0 < nz:
                want = (min(step, nz - z0) * plane_bytes) - filled
                take = min(want, len(view) - start)
                buffer[filled:filled + take] = np.frombuffer(view[start:start + take], dtype=np.uint8)
                filled += take
                start += take
                if take == want:
                    z1 = min(z0 + step, nz)
                    planes = buffer[:filled].view(stored).reshape(z1 - z0, ny, nx)
                    if not planes.dtype.isnative:
                        planes = planes.astype(planes.dtype.newbyteorder("="))
                    if raw.must_rescale:
                        planes = _itk_rescale(planes, raw.slope, raw.inter, raw.out_dtype)
                    nonfinite += _count_nonfinite(planes)
                    yield z0, z1, planes
                    z0, filled = z1, 0
        self._source.drain()
        if z0 < nz:
            where = "the decompressed data holds" if self._is_gzip else "the file holds"
            raise _truncated(p, where, position, raw)
        source = self._source
        self.fingerprint = FileFingerprint(p, source.size, self._mtime_ns, source.hasher.hexdigest())
        self.nonfinite_count = nonfinite


def read_planes(path, *, max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES) -> ImagePlanes:
    """Open an image for decoding slab by slab (`ImagePlanes`): for analyses that need one pass
    over the voxels, so the image is never held whole. Same values, checks and errors as
    `read_image`; use it as a context manager so the file is closed if the pass stops early."""
    return ImagePlanes(path, max_bytes=max_bytes)
