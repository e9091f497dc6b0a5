"""Foreground intensity samples and nnU-Net v1's statistics over them, bit for bit.

v1 (DatasetAnalyzer.collect_intensity_properties) takes, per case and channel,
`data[c][seg > 0][::10]` of the cropped float32 array, and computes with numpy 1.x:
median, mean, sd (population), mn, mx as np.float32 and the 0.5 / 99.5 percentiles as
np.float64. numpy 2 changed the percentile's type and rounding (NEP 50) and can move the float32
sd by one ulp, so both are computed here with numpy 1.x's formulas explicitly.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_STEP = 10  # v1 keeps every 10th foreground voxel, starting at the first
STAT_KEYS = ("median", "mean", "sd", "mn", "mx", "percentile_99_5", "percentile_00_5")


def percentile_v1(sorted_values: np.ndarray, q: float) -> np.float64:
    """numpy 1.x `np.percentile(float32_array, q)` (linear method) on an ascending float32 array."""
    n = sorted_values.shape[0]
    index = np.float64(n - 1) * (np.float64(q) / 100)
    below = math.floor(index)
    lo = sorted_values[below]
    hi = sorted_values[min(below + 1, n - 1)]
    g = index - below
    diff = np.float32(hi - lo)
    if g >= 0.5:
        return np.float64(hi) - np.float64(diff) * (1 - g)
    return np.float64(lo) + np.float64(diff) * g


def mean_v1(values: np.ndarray) -> np.float32:
    """np.mean of a float32 array under numpy 1.x: pairwise float32 sum, divided in float64."""
    total = np.add.reduce(values, dtype=np.float32)
    return np.float32(np.float64(total) / values.shape[0])


def std_v1(values: np.ndarray) -> np.float32:
    """np.std (ddof=0) of a float32 array exactly as numpy 1.x's `_var` computes it."""
    n = values.shape[0]
    mean = np.add.reduce(values, dtype=np.float32, keepdims=True)
    mean = (mean.astype(np.float64) / n).astype(np.float32)
    # float32 overflows to inf for |values| around 1e19, as in nnU-Net v1: keep that, silently
    with np.errstate(over="ignore", invalid="ignore"):
        deviation = values - mean
        np.multiply(deviation, deviation, out=deviation)
        total = np.add.reduce(deviation, dtype=np.float32)
        return np.sqrt(np.float32(np.float64(total) / n))


def median_v1(sorted_values: np.ndarray) -> np.float32:
    """`np.median(float32_array)` from the array sorted ascending (no partitioned copy): the mean
    of the middle one or two values, as np.median takes it; NaN when there is any (sorted last)."""
    n = sorted_values.shape[0]
    if np.isnan(sorted_values[-1]):
        return np.float32(np.nan)
    middle = sorted_values[(n - 1) // 2: n // 2 + 1]
    return np.mean(middle)


@dataclass(frozen=True)
class IntensityStats:
    """v1's seven statistics. NaN (Python float) everywhere when there were no samples."""

    median: float
    mean: float
    sd: float
    mn: float
    mx: float
    percentile_99_5: float
    percentile_00_5: float

    def as_v1(self) -> OrderedDict:
        """The values with v1's types: np.float32 x5, np.float64 x2, or Python nan x7."""
        if math.isnan(self.mx):
            return OrderedDict((k, float("nan")) for k in STAT_KEYS)
        return OrderedDict([
            ("median", np.float32(self.median)), ("mean", np.float32(self.mean)),
            ("sd", np.float32(self.sd)), ("mn", np.float32(self.mn)), ("mx", np.float32(self.mx)),
            ("percentile_99_5", np.float64(self.percentile_99_5)),
            ("percentile_00_5", np.float64(self.percentile_00_5)),
        ])


EMPTY_STATS = IntensityStats(*(math.nan,) * 7)


def _order_statistics(values: np.ndarray) -> np.ndarray:
    """A copy of `values` with every rank `median_v1`, `percentile_v1` (0.5 and 99.5), min and max
    read holding the value np.sort would put there (NaN last, as np.sort does): a partition at
    those ranks, faster than sorting pooled samples.

    One rank per partition call, each on the part of the array between ranks already placed:
    numpy 2 selects a single rank with SIMD code but several ranks in one call without it
    (1.42 M CT samples: 8 ms this way against 25 ms for one call with all eight ranks)."""
    n = values.shape[0]
    ranks = {0, n - 1, (n - 1) // 2, n // 2}
    for q in (0.5, 99.5):
        below = math.floor(np.float64(n - 1) * (np.float64(q) / 100))
        ranks |= {below, min(below + 1, n - 1)}
    ordered = values.copy()
    pending = [(0, n, sorted(ranks))]
    while pending:
        lo, hi, inside = pending.pop()
        if not inside:
            continue
        k = inside[len(inside) // 2]
        ordered[lo:hi].partition(k - lo)  # in place: ordered[k] final, smaller left, larger right
        pending += [(lo, k, [r for r in inside if r < k]), (k + 1, hi, [r for r in inside if r > k])]
    return ordered


def compute_stats(samples: np.ndarray) -> IntensityStats:
    """v1's `_compute_stats` on float32 samples (order matters for mean and sd)."""
    values = np.ascontiguousarray(samples, dtype=np.float32)
    if values.size == 0:
        return EMPTY_STATS
    ordered = _order_statistics(values)
    return IntensityStats(
        median=float(median_v1(ordered)),
        mean=float(mean_v1(values)),
        sd=float(std_v1(values)),
        mn=float(ordered[0]),
        mx=float(ordered[-1]),
        percentile_99_5=float(percentile_v1(ordered, 99.5)),
        percentile_00_5=float(percentile_v1(ordered, 0.5)),
    )


def pooled_stats(per_case_samples: Sequence[np.ndarray]) -> IntensityStats:
    """v1's global statistics: the cases' samples concatenated in the given (sorted-id) order."""
    if not per_case_samples:
        return EMPTY_STATS
    return compute_stats(np.concatenate([np.asarray(s, dtype=np.float32) for s in per_case_samples]))
