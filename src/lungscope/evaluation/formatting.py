"""How probabilities and thresholds are written for people: the terminal, the HTML report, explanation figures."""

from __future__ import annotations

import math
from typing import Any

MAX_DECIMALS = 6


def format_probability(value: float, decimals: int = 3) -> str:
    """``value`` in [0, 1] with ``decimals`` decimals, or more near 0 and 1: enough for two significant digits of
    its distance to the nearer end, so that 0.9997 never reads 1.000 beside a 0.9994 called below it. Beyond
    :data:`MAX_DECIMALS` a value short of an end is written ``>0.999999`` or ``<0.000001``."""
    distance = min(value, 1.0 - value)
    if distance > 0:
        decimals = max(decimals, 1 - math.floor(math.log10(distance)))
    if decimals > MAX_DECIMALS:
        bound = 10.0**-MAX_DECIMALS
        return f"<{bound:.{MAX_DECIMALS}f}" if value < 0.5 else f">{1 - bound:.{MAX_DECIMALS}f}"
    return f"{value:.{decimals}f}"


def format_against(value: float, threshold: float) -> tuple[str, str]:
    """``value`` and the ``threshold`` it was called against, with as many decimals as tell them apart (0.9140
    below 0.9145, not 0.914 beside 0.914, which reads as a contradiction)."""
    apart = (d for d in range(3, MAX_DECIMALS + 1) if format_probability(value, d) != format_probability(threshold, d))
    decimals = next(apart, MAX_DECIMALS)
    return format_probability(value, decimals), format_probability(threshold, decimals)


def describe_calibration(calibration: dict[str, Any]) -> str:
    """The calibration a run stores, named as fitted: temperature scaling, or temperature and per-class bias."""
    if calibration.get("bias") is None:
        return f"temperature scaling (T = {calibration['temperature']:.3f})"
    bias = ", ".join(f"{b:.3f}" for b in calibration["bias"])
    return f"temperature and bias calibration (T = {calibration['temperature']:.3f}, bias per class [{bias}])"


def format_ci(value: float, low: float | None = None, high: float | None = None, decimals: int = 3) -> str:
    """A value and its 95% interval, ``0.912 (0.880-0.940)``: every "value (CI)" lungscope writes. Without an
    interval (``low`` or ``high`` None), the value alone."""
    if low is None or high is None:
        return f"{value:.{decimals}f}"
    return f"{value:.{decimals}f} ({low:.{decimals}f}-{high:.{decimals}f})"


def format_metric(entry: dict[str, Any]) -> str:
    """A report's metric entry (``value``, ``ci95``: None where undefined or not resampled) by :func:`format_ci`."""
    if entry["value"] is None:
        return "undefined"
    return format_ci(entry["value"], *(entry["ci95"] or (None, None)))
