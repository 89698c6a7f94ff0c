"""Which methods' maps may not depend on the model, and the warning ``explain`` gives when one is used."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

# Methods that fail the model-randomisation test in the literature: their maps stay nearly the same when the
# network's weights are replaced by random ones, so they show the image's edges more than what the model uses.
KNOWN_FLAGGED: dict[str, str] = {
    "guided-backprop": "fails the model-randomisation test (Adebayo et al. 2018, Sanity Checks for Saliency Maps)",
    "guided-gradcam": "fails the model-randomisation test (Adebayo et al. 2018, Sanity Checks for Saliency Maps)",
    "deconvolution": "reconstructs the image regardless of the weights (Nie et al. 2018, ICML)",
}
# A method is flagged when its signed maps keep at least this Spearman rank correlation, averaged over the cascade,
# with the maps of the trained model while the weights are randomised from the top layer down.
FLAG_THRESHOLD = 0.5
CHECK_FILE = "explain_check.json"  # where ``lungscope explain-check`` leaves its report in the run folder


class SanityWarning(UserWarning):
    """The maps of this method may barely depend on the model's weights."""


def check_path(run: str | os.PathLike[str] | None) -> Path | None:
    """Where a run's explain-check report lives: in the run folder, or beside the checkpoint if given one; None
    for anything else (``"default"``, the bundled model)."""
    path = Path(run) if run is not None else None
    if path is None or not path.exists():
        return None
    return (path if path.is_dir() else path.parent) / CHECK_FILE


def _measured(method: str, run: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """``method``'s entry in the run's explain-check report, or None: no report, or it did not measure ``method``."""
    check = check_path(run)
    if check is None or not check.is_file():
        return None
    try:
        entry = json.loads(check.read_text())["methods"].get(method)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # a foreign or damaged file says nothing about this run
    return entry if isinstance(entry, dict) else None


def untrusted_reason(method: str, run: str | os.PathLike[str] | None = None) -> str | None:
    """Why ``method``'s maps should not be trusted, or None. The run's own explain-check decides when it measured
    ``method`` (a method it did not flag gets no warning); otherwise the literature's finding, said to be one."""
    entry = _measured(method, run)
    if entry is not None:
        if not entry.get("flagged"):
            return None
        return (f"its maps kept a rank correlation of {entry['randomization_spearman']:.2f} with those of randomised "
                f"weights in this run's explain-check ({check_path(run)}; flagged from {FLAG_THRESHOLD})")
    if method in KNOWN_FLAGGED:
        return (f"in the literature it {KNOWN_FLAGGED[method]}, a general finding and not a measurement of this model "
                "(`lungscope explain-check RUN` measures it)")
    return None


def warn_if_untrusted(method: str, run: str | os.PathLike[str] | None = None, stacklevel: int = 3) -> None:
    """Issue a :class:`SanityWarning` if :func:`untrusted_reason` gives one."""
    if reason := untrusted_reason(method, run):
        warnings.warn(f"{method} maps may not reflect the model: {reason}", SanityWarning, stacklevel=stacklevel)
