"""nnU-Net v1's crop: nonzero mask with hole filling, half-open bounding box, seg with -1.

All arrays are numpy order (z, y, x). Pure functions: arrays in, arrays and tuples out.

Hole filling works row by row first (`fill_holes_by_rows`): a zero voxel before a row's first
mask voxel or after its last reaches the box's x faces, so only the zeros between them can be
holes, and in images those are few. The slab-wise 6-connected labelling of every zero
(`fill_holes`) is kept for masks with many of them.

Everything here works in slabs of whole z-planes (`SLAB_VOXELS` voxels at most), so that no
temporary is as large as the volume: a worker's peak memory stays close to the decoded images
themselves (the full-volume bool mask and the uint32 labels of one connected-components pass over
the whole box were most of it before).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import cc3d
import numpy as np

BBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

# Voxels per slab: one bool temporary is 4 MiB, the uint32 labels of a slab 16 MiB. Measured on
# the CT benchmark: 2x more voxels per slab is ~15% slower (slab temporaries above malloc's 32 MiB
# mmap threshold come as fresh zeroed pages every time), 2x fewer is no faster.
SLAB_VOXELS = 1 << 22


def z_slabs(n_planes: int, plane_voxels: int, slab_voxels: int | None = None) -> Iterator[tuple[int, int]]:
    """Half-open [z0, z1) ranges of whole planes covering 0..n_planes, about slab_voxels each
    (default `SLAB_VOXELS`)."""
    step = max(1, (slab_voxels or SLAB_VOXELS) // max(1, plane_voxels))
    for z0 in range(0, n_planes, step):
        yield z0, min(n_planes, z0 + step)


def as_slices(bbox: BBox) -> tuple[slice, slice, slice]:
    return tuple(slice(a, b) for a, b in bbox)  # type: ignore[return-value]


def slab_bounding_box(shape: tuple[int, int, int], mask_of_planes: Callable[[int, int], np.ndarray],
                      slab_voxels: int | None = None) -> BBox | None:
    """Half-open [start, stop) per axis of the True voxels of a 3D mask given slab by slab
    (`mask_of_planes(z0, z1)` returns the bool mask of planes z0..z1), or None if it is empty.

    Per-axis `any()` projections instead of v1's `np.where` + min/max: same result, no index
    arrays, and never the whole mask in memory.
    """
    planes_hit = np.zeros(shape[0], dtype=bool)
    yx_hit = np.zeros(shape[1:], dtype=bool)
    for z0, z1 in z_slabs(shape[0], shape[1] * shape[2], slab_voxels):
        mask = mask_of_planes(z0, z1)
        planes_hit[z0:z1] = mask.any(axis=(1, 2))
        yx_hit |= mask.any(axis=0)
    return _box_of_projections(planes_hit, yx_hit)


def _box_of_projections(planes_hit: np.ndarray, yx_hit: np.ndarray) -> BBox | None:
    """The box from "any True in this z-plane" (z,) and "any True in this (y, x) column" (y, x)
    projections of a mask; None when the mask is empty."""
    box = []
    for hits in (planes_hit, yx_hit.any(axis=1), yx_hit.any(axis=0)):
        where = np.flatnonzero(hits)
        if where.size == 0:
            return None
        box.append((int(where[0]), int(where[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def bounding_box(mask: np.ndarray) -> BBox | None:
    """Half-open [start, stop) per axis of the True voxels of a 3D mask, or None if it is empty."""
    return slab_bounding_box(mask.shape, lambda z0, z1: mask[z0:z1])


def fill_holes(shape: tuple[int, int, int], zeros_of_planes: Callable[[int, int, np.ndarray], None],
               slab_voxels: int | None = None) -> np.ndarray:
    """Hole-filled mask of a 3D box whose zero (unmasked) voxels are given slab by slab:
    `zeros_of_planes(z0, z1, out)` writes the bool "not in the mask" of planes z0..z1 into `out`.

    Same result as scipy.ndimage.binary_fill_holes of the box when the box is the mask's own
    bounding box (every voxel outside it is zero and reaches the border): a hole is a zero region
    6-connected to none of the box's faces.

    Each slab is padded with a one-voxel zero frame on its y and x faces (and on the box's first
    and last plane), so one 6-connected labelling joins every region that touches those faces into
    the component of the first voxel (label 1). A region that is not label 1 in its slab can
    still reach a face through a neighbouring slab: the labels of the shared planes are joined in
    a union-find over all slabs, and the few slabs that hold such a region are labelled again to
    clear it. Exact, and the largest temporary is one slab's labels.
    """
    n_planes, ny, nx = shape
    filled = np.empty(shape, dtype=bool)
    slabs = list(z_slabs(n_planes, (ny + 2) * (nx + 2), slab_voxels))
    bases = []  # global id of a slab's local label L is bases[slab] + L; 0 is "outside"
    next_base = 0
    edges = [np.array([[0, 1]], dtype=np.int64)]  # outside -- label 1 of slab 0 (bases[0] = 0)
    previous_last_plane, previous_base = None, 0  # labels of the slab above's last plane

    def label_slab(z0: int, z1: int) -> tuple[np.ndarray, int]:
        """6-connected labels of the framed slab's zeros, without the frame; and their count."""
        top, bottom = int(z0 == 0), int(z1 == n_planes)
        zeros = np.ones((z1 - z0 + top + bottom, ny + 2, nx + 2), dtype=bool)
        zeros_of_planes(z0, z1, zeros[top:top + z1 - z0, 1:-1, 1:-1])
        labels, count = cc3d.connected_components(zeros, connectivity=6, return_N=True)
        return labels[top:top + z1 - z0, 1:-1, 1:-1], count

    for index, (z0, z1) in enumerate(slabs):
        inner, count = label_slab(z0, z1)
        np.not_equal(inner, 1, out=filled[z0:z1])
        base = next_base
        bases.append(base)
        if index:
            edges.append(np.array([[0, base + 1]], dtype=np.int64))
            edges.append(_shared_plane_edges(previous_last_plane, previous_base, inner[0], base))
        previous_last_plane, previous_base = inner[-1].copy(), base
        next_base = base + count + 1
        del inner

    outside_ids = _ids_joined_to_outside(np.concatenate(edges))
    for index, (z0, z1) in enumerate(slabs):
        base, end = bases[index], (bases[index + 1] if index + 1 < len(bases) else next_base)
        local = outside_ids[(outside_ids > base + 1) & (outside_ids < end)] - base
        if local.size:  # regions of this slab that reach a face through other slabs
            inner, _ = label_slab(z0, z1)
            filled[z0:z1][np.isin(inner, local)] = False
    return filled


def _shared_plane_edges(upper: np.ndarray, upper_base: int, lower: np.ndarray, lower_base: int) -> np.ndarray:
    """Global-id pairs of zero regions that touch across two adjacent planes (label 0 = mask)."""
    both = (upper != 0) & (lower != 0)
    pairs = np.unique(upper[both].astype(np.int64) << 32 | lower[both].astype(np.int64))
    return np.stack([(pairs >> 32) + upper_base, (pairs & 0xFFFFFFFF) + lower_base], axis=1)


def _ids_joined_to_outside(edges: np.ndarray) -> np.ndarray:
    """Sorted global ids connected to id 0 by the undirected `edges` (k x 2): a vectorised
    union-find (hook every edge's larger root onto the smaller, then jump pointers)."""
    nodes, compact = np.unique(edges, return_inverse=True)
    compact = compact.reshape(edges.shape)
    parent = np.arange(nodes.size)
    while True:
        roots = parent[compact]
        differ = roots[:, 0] != roots[:, 1]
        if not differ.any():
            break
        low, high = roots[differ].min(axis=1), roots[differ].max(axis=1)
        np.minimum.at(parent, high, low)
        while True:  # pointer jumping until every node points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return nodes[parent == parent[0]]  # nodes[0] is id 0


class FilledMask:
    """The hole-filled nonzero mask of a crop box, numpy order (z, y, x) of the box.

    Kept compactly when it came from `fill_holes_by_rows`: per row (z, y) the span
    [first, last] of its mask voxels, minus `cuts` (sorted flat indices into the box) of the
    zero voxels inside spans that reach a face. Or, from `fill_holes`, the whole bool array.
    `planes(z0, z1)` gives the bool array of some planes, so no caller needs all of it at once.
    """

    def __init__(self, shape: tuple[int, int, int], *, dense: np.ndarray | None = None,
                 first: np.ndarray | None = None, last: np.ndarray | None = None,
                 cuts: np.ndarray | None = None):
        self.shape = tuple(int(n) for n in shape)
        self._dense, self._first, self._last = dense, first, last
        self._cuts = cuts if cuts is not None else np.zeros(0, dtype=np.int64)

    @classmethod
    def from_array(cls, filled: np.ndarray) -> FilledMask:
        return cls(filled.shape, dense=np.asarray(filled, dtype=bool))

    def count(self) -> int:
        """Voxels of the filled mask."""
        if self._dense is not None:
            return int(np.count_nonzero(self._dense))
        spans = self._last.astype(np.int64) - self._first + 1
        return int(spans[spans > 0].sum()) - self._cuts.size

    def planes(self, z0: int, z1: int) -> np.ndarray:
        """The bool mask of planes z0..z1, a (z1 - z0, y, x) array (a view when dense)."""
        if self._dense is not None:
            return self._dense[z0:z1]
        _, ny, nx = self.shape
        x = np.arange(nx, dtype=self._first.dtype)
        out = np.greater_equal(x, self._first[z0:z1, :, None])
        out &= np.less_equal(x, self._last[z0:z1, :, None])
        plane_voxels = ny * nx
        a, b = np.searchsorted(self._cuts, (z0 * plane_voxels, z1 * plane_voxels))
        out.reshape(-1)[self._cuts[a:b] - z0 * plane_voxels] = False
        return out

    def to_array(self) -> np.ndarray:
        """The whole bool mask, (z, y, x) of the box (a new array)."""
        whole = self.planes(0, self.shape[0])
        return whole.copy() if self._dense is not None else whole


# Per byte of np.packbits output (big-endian bits: voxel x = 8 * byte + bit, bit 0 the most
# significant): its first and last set bit, and how many bits are set.
_BYTES = np.arange(256)
_FIRST_BIT = np.array([8] + [8 - int(b).bit_length() for b in _BYTES[1:]], dtype=np.int64)  # highest set bit
_LAST_BIT = np.array([-1] + [8 - (int(b) & -int(b)).bit_length() for b in _BYTES[1:]], dtype=np.int64)  # lowest
_SET_BITS = np.array([bin(int(b)).count("1") for b in _BYTES], dtype=np.uint8)

# Beyond this share of the box's voxels as zeros inside rows, `fill_holes` (6-connected
# labelling of every zero, slab by slab, 2-4 ns per voxel here) is cheaper than joining the
# candidates (about 1.5 us each). Random masks of 4 M voxels, by hand: 0.05 % of zeros 5 ms
# against 16 ms, 0.2 % 13 ms against 12 ms, 0.5 % 15 ms against 8 ms. The CT benchmark's
# masks have 0.01-0.03 %.
MAX_ROW_CANDIDATE_SHARE = 1 / 512


def row_spans(bits: np.ndarray, x0: int, nx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First and last True x (relative to x0) and True count of every row of a mask packed
    along x (`bits`: (z, y, bytes), np.packbits order), whose True voxels all lie in x0..x0+nx.
    Rows with no True voxel get first = nx, last = -1. Arrays (z, y): int32, int32, int64."""
    nonzero = bits != 0
    first_byte = nonzero.argmax(axis=-1)
    last_byte = bits.shape[-1] - 1 - nonzero[..., ::-1].argmax(axis=-1)
    first_bits = np.take_along_axis(bits, first_byte[..., None], axis=-1)[..., 0]
    last_bits = np.take_along_axis(bits, last_byte[..., None], axis=-1)[..., 0]
    has_any = first_bits != 0  # argmax of an all-False row is 0, a zero byte
    first = np.where(has_any, 8 * first_byte + _FIRST_BIT[first_bits] - x0, nx).astype(np.int32)
    last = np.where(has_any, 8 * last_byte + _LAST_BIT[last_bits] - x0, -1).astype(np.int32)
    if hasattr(np, "bitwise_count") and bits.shape[-1] % 8 == 0:  # numpy >= 2: 8 bytes at a time
        set_bits = np.bitwise_count(bits.view(np.uint64))
    else:
        set_bits = _SET_BITS[bits]
    return first, last, set_bits.sum(axis=-1, dtype=np.int64)


def _zeros_inside_spans(bits: np.ndarray, rows: np.ndarray, first: np.ndarray, last: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(row, x) of the zero bits strictly between first[row] and last[row] of the given rows of
    `bits` ((rows, bytes), np.packbits order), in row then x order. Works on the bytes that are
    not all ones, so the cost follows the number of zeros, not of voxels."""
    zero_bits = np.invert(bits[rows])
    which, byte = np.nonzero(zero_bits)
    row, x = np.divmod(np.flatnonzero(np.unpackbits(zero_bits[which, byte][:, None], axis=1)), 8)
    row, x = rows[which[row]], 8 * byte[row] + x
    inside = (x > first[row]) & (x < last[row])
    return row[inside], x[inside]


def fill_holes_by_rows(bits: np.ndarray, x0: int, nx: int, max_candidates: int | None = None) -> FilledMask | None:
    """Hole-filled mask of a box, from the mask packed along x (`bits`: the box's rows,
    (z, y, bytes) in np.packbits order, True voxels only in x0..x0+nx), where the box is the
    mask's own bounding box. Same result as `fill_holes`; None when more than `max_candidates`
    (default: `MAX_ROW_CANDIDATE_SHARE` of the box) zeros lie inside rows.

    A zero before a row's first mask voxel or after its last is joined to an x face along the
    row ("edge zero", outside). Every other zero ("candidate") is outside exactly when its
    6-connected region of candidates holds a voxel on a y or z face of the box, or one next to
    an edge zero (a path from it to a face leaves the candidates there or ends on a face).
    Those regions are found with a union-find over the candidates alone.
    """
    nz, ny = bits.shape[:2]
    first, last, count = row_spans(bits, x0, nx)
    gaps = np.maximum(last - first + 1, 0) - count  # candidates per row
    n_candidates = int(gaps.sum())
    if max_candidates is None:
        max_candidates = int(nz * ny * nx * MAX_ROW_CANDIDATE_SHARE)
    if n_candidates > max_candidates:
        return None
    if n_candidates == 0:
        return FilledMask((nz, ny, nx), first=first, last=last)

    first_of, last_of = first.reshape(-1), last.reshape(-1)
    row, xs = _zeros_inside_spans(bits.reshape(nz * ny, -1), np.flatnonzero(gaps), first_of + x0, last_of + x0)
    xs -= x0
    index = row * nx + xs  # flat index in the box, ascending
    z, y = np.divmod(row, ny)

    touches = (z == 0) | (z == nz - 1) | (y == 0) | (y == ny - 1)  # on a y or z face
    inner = np.flatnonzero(~touches)
    for step in (-ny, -1, 1, ny):  # the rows above, below, before and behind (never off the box)
        neighbour_row, at = row[inner] + step, xs[inner]
        touches[inner] |= (at < first_of[neighbour_row]) | (at > last_of[neighbour_row])

    edges = [np.array([[0, 0]], dtype=np.int64),  # node 0 = outside; candidate i = node i + 1
             np.stack([np.zeros(np.count_nonzero(touches), np.int64), np.flatnonzero(touches) + 1], axis=1)]
    for offset, valid in ((1, None), (nx, y < ny - 1), (ny * nx, z < nz - 1)):
        target = index + offset
        position = np.minimum(np.searchsorted(index, target), index.size - 1)
        hit = index[position] == target
        if valid is not None:
            hit &= valid
        source = np.flatnonzero(hit)
        edges.append(np.stack([source + 1, position[source] + 1], axis=1))
    joined = _ids_joined_to_outside(np.concatenate(edges))
    return FilledMask((nz, ny, nx), first=first, last=last, cuts=index[joined[1:] - 1])


def fill_holes_in_box(mask_in_box: np.ndarray, slab_voxels: int | None = None) -> np.ndarray:
    """Fill the holes of a mask cropped to its own bounding box; same result as
    scipy.ndimage.binary_fill_holes on the whole volume."""

    def zeros(z0: int, z1: int, out: np.ndarray) -> None:
        np.logical_not(mask_in_box[z0:z1], out=out)

    return fill_holes(mask_in_box.shape, zeros, slab_voxels)


class NonzeroMask:
    """v1's nonzero mask (any channel != 0) of a (z, y, x) volume, built from slabs of the
    channels given in any order, so no channel has to be held whole: per-plane and per-(y, x)
    projections for the box, and 1 bit per voxel for the hole filling."""

    def __init__(self, shape: tuple[int, int, int]):
        z, y, x = shape
        self.shape = shape
        self._planes_hit = np.zeros(z, dtype=bool)
        self._yx_hit = np.zeros((y, x), dtype=bool)
        self._bits = np.zeros((z, y, (x + 63) // 64 * 8), dtype=np.uint8)  # rows of whole 64-bit words

    def add(self, z0: int, z1: int, planes: np.ndarray) -> None:
        """Planes z0..z1 (a (z1 - z0, y, x) array) of one channel."""
        nonzero = planes != 0
        self._planes_hit[z0:z1] |= nonzero.any(axis=(1, 2))
        self._yx_hit |= nonzero.any(axis=0)
        self._bits[z0:z1, :, :(self.shape[2] + 7) // 8] |= np.packbits(nonzero, axis=-1)

    def crop(self, slab_voxels: int | None = None) -> tuple[BBox, FilledMask] | None:
        """Bounding box of the mask, and the hole-filled mask inside that box; None when every
        voxel of every channel is 0. Hole filling cannot change the box (holes are enclosed by
        mask voxels), so the box is taken first and filling runs inside it only: row by row
        (`fill_holes_by_rows`), or for masks with many zeros inside rows by `fill_holes`."""
        bbox = _box_of_projections(self._planes_hit, self._yx_hit)
        if bbox is None:
            return None
        (bz0, bz1), (y0, y1), (x0, x1) = bbox
        filled = fill_holes_by_rows(np.ascontiguousarray(self._bits[bz0:bz1, y0:y1]), x0, x1 - x0)
        if filled is not None:
            return bbox, filled
        nx = self.shape[2]

        def zeros(z0: int, z1: int, out: np.ndarray) -> None:
            bits = np.unpackbits(self._bits[bz0 + z0:bz0 + z1], axis=-1, count=nx)
            np.logical_not(bits[:, y0:y1, x0:x1], out=out)

        box_shape = tuple(b - a for a, b in bbox)
        return bbox, FilledMask.from_array(fill_holes(box_shape, zeros, slab_voxels))  # type: ignore[arg-type]


def crop_mask(channels: Sequence[np.ndarray], slab_voxels: int | None = None) -> tuple[BBox, FilledMask] | None:
    """`NonzeroMask.crop` of channels held in memory: the box of the union nonzero mask and the
    hole-filled mask inside it, or None when every voxel of every channel is 0."""
    shape = channels[0].shape
    mask = NonzeroMask(shape)
    for channel in channels:
        for z0, z1 in z_slabs(shape[0], shape[1] * shape[2], slab_voxels):
            mask.add(z0, z1, channel[z0:z1])
    return mask.crop(slab_voxels)


def crop_seg(label: np.ndarray, bbox: BBox, filled: FilledMask, planes: tuple[int, int] | None = None,
             dtype=np.int16) -> np.ndarray:
    """v1's cropped seg: label inside the box, -1 where the label is 0 outside the mask.

    Labelled voxels outside the mask keep their label; labels outside the box are dropped.
    `label` must hold integer class values (z, y, x). `planes` = (z0, z1) gives only those planes
    of the cropped seg (for writing it slab by slab); `dtype` is int16 (v1's analysis) or float32
    (v1's npz).
    """
    z0, z1 = planes if planes is not None else (0, bbox[0][1] - bbox[0][0])
    region = (slice(bbox[0][0] + z0, bbox[0][0] + z1), *as_slices(bbox)[1:])
    seg = label[region].astype(dtype)
    outside_background = seg == 0
    outside_background &= ~filled.planes(z0, z1)
    seg[outside_background] = -1
    return seg
