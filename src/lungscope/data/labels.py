"""Label schemes, and the patient and label that a file's name (or class folder) carries.

Name forms understood (any image suffix, or none; see ``../shared/data/README.md``):

* Kermany pediatric pneumonia: ``personN_bacteria_K`` / ``personN_virus_K`` (one name has an extra ``_K``),
  patient ``personN``; normals ``IM-PPPP-SSSS``, ``IM-PPPP-SSSS-SSSS``, ``NORMAL2-IM-PPPP-SSSS``, patient
  ``IM-PPPP`` / ``NORMAL2-IM-PPPP`` (the prefix counts: ``IM-0115`` and ``NORMAL2-IM-0115`` are different people).
* Montgomery / Shenzhen tuberculosis: ``MCUCXR_NNNN_L`` / ``CHNCXR_NNNN_L``, patient ``MCUCXR_NNNN``, label
  ``L`` = 0 normal, 1 tuberculosis (one image per patient).
"""

from __future__ import annotations

import re
from os import PathLike
from pathlib import PurePath

import numpy as np

from lungscope.errors import ConfigError

LABEL_SCHEMES: dict[str, tuple[str, ...]] = {
    "binary": ("NORMAL", "PNEUMONIA"),
    "three-class": ("NORMAL", "BACTERIA", "VIRUS"),
    "tb": ("NORMAL", "TUBERCULOSIS"),
}

# Every class name of every scheme: a folder so named is a class folder whichever scheme is asked for.
CLASS_NAMES: frozenset[str] = frozenset(c for classes in LABEL_SCHEMES.values() for c in classes)

_SUFFIX = r"(?:\.[A-Za-z0-9]+)?$"
_PNEUMONIA = re.compile(r"^(?P<patient>person\d+)_(?P<kind>bacteria|virus)_\d+(?:_\d+)*" + _SUFFIX, re.IGNORECASE)
_NORMAL = re.compile(r"^(?P<patient>(?:NORMAL\d*-)?IM-\d+)-\d+(?:-\d+)*" + _SUFFIX, re.IGNORECASE)
_TB = re.compile(r"^(?P<patient>(?:CHN|MCU)CXR_\d+)_(?P<tb>[01])" + _SUFFIX, re.IGNORECASE)
_NAME_FORMS = (_PNEUMONIA, _NORMAL, _TB)

# Under the binary scheme a folder or manifest saying BACTERIA or VIRUS means PNEUMONIA.
_BINARY_ALIASES = {"BACTERIA": "PNEUMONIA", "VIRUS": "PNEUMONIA"}


def classes_for(scheme: str) -> tuple[str, ...]:
    """The class names of a label scheme, in class-index order. Raises ConfigError for an unknown scheme."""
    try:
        return LABEL_SCHEMES[scheme]
    except KeyError:
        raise ConfigError(f"unknown label scheme {scheme!r}; valid schemes: {', '.join(LABEL_SCHEMES)}") from None


def decide(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The class index called for each row of probabilities (N x C), lungscope's one decision rule: a binary model
    with an operating ``threshold`` calls class 1 where ``p[:, 1] >= threshold``, any other the most probable class.
    A 1-D array is a binary model's ``p[:, 1]`` (then ``threshold`` is needed)."""
    if probabilities.ndim == 1 or (threshold is not None and probabilities.shape[1] == 2):
        positive = probabilities if probabilities.ndim == 1 else probabilities[:, 1]
        return (positive >= threshold).astype(np.int64)
    return probabilities.argmax(axis=1)


def patient_id(path: str | PathLike[str]) -> str | None:
    """The patient key in a Kermany or Montgomery/Shenzhen file name, or None for any other name."""
    name = PurePath(path).name
    for form in _NAME_FORMS:
        if match := form.match(name):
            return match["patient"]
    return None


def canonical_label(value: str, scheme: str) -> str | None:
    """The class of ``scheme`` that a folder or manifest label names (case-insensitive), or None if none."""
    label = value.strip().upper()
    if scheme == "binary":
        label = _BINARY_ALIASES.get(label, label)
    return label if label in classes_for(scheme) else None


def label_for(path: str | PathLike[str], scheme: str, folder_label: str | None = None) -> str | None:
    """The class of ``path`` under ``scheme``, or None if neither its class folder nor its name tells.

    A ``folder_label`` naming a class of the scheme wins (see :func:`canonical_label`); otherwise the name decides:
    Kermany names give NORMAL / PNEUMONIA (binary) or NORMAL / BACTERIA / VIRUS (three-class), Montgomery/Shenzhen
    names NORMAL / TUBERCULOSIS (tb). A name of another scheme's data set gives None.
    """
    classes_for(scheme)  # an unknown scheme is a ConfigError, not a None
    if folder_label is not None and (label := canonical_label(folder_label, scheme)) is not None:
        return label
    name = PurePath(path).name
    if scheme == "tb":
        match = _TB.match(name)
        return None if match is None else ("NORMAL", "TUBERCULOSIS")[int(match["tb"])]
    if _NORMAL.match(name):
        return "NORMAL"
    if match := _PNEUMONIA.match(name):
        return "PNEUMONIA" if scheme == "binary" else match["kind"].upper()
    return None
