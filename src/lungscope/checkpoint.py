"""Checkpoints: plain dicts of tensors and primitives, so ``torch.load(..., weights_only=True)`` reads them.

One schema, versioned: :data:`VARIANTS` declares each layout lungscope writes (the key that tells it apart and the
keys it must hold), :func:`save_checkpoint` checks a state against it and stamps :data:`VERSION` under
:data:`VERSION_KEY`, and :func:`load_checkpoint` refuses, in one line, a foreign, corrupt, newer or incomplete file.
A file without the version key is version 1: the same layouts, written before the key existed (the bundled models),
less the keys :data:`SINCE` names (a version-1 classifier has no ``preprocessing``: its config's keys say it; a
segmenter older than version 3 has no ``normalise``: it was "fixed").
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lungscope.errors import ConfigError

VERSION_KEY = "lungscope_checkpoint"
BEST, LAST = "best.pt", "last.pt"  # a run folder's checkpoints: the chosen epoch's model, the state to resume
VERSION = 3  # 1: the same layouts without the version key
SINCE = {"preprocessing": 2, "normalise": 3}  # required keys that a file of an older version may lack

Kind = Literal["classifier", "segmenter", "orientation check", "training state"]  # what a reader may ask for
CLASSIFIER_VERBS = "predict, evaluate, explain, features, serve, export"
CLASSIFIER_KEYS = ("model", "config", "classes", "image_size", "preprocessing")  # data.transforms.Preprocessing


@dataclass(frozen=True)
class Variant:
    """One layout of checkpoint."""

    marker: str  # a key only this variant's files hold (the first matching variant in VARIANTS wins)
    required: tuple[str, ...]  # the keys its readers need
    what: str  # how messages name it
    verbs: str  # the lungscope verbs that take it
    kind: Kind  # what ``load_checkpoint(kind=...)`` asks for to accept it: a two-stage classifier is a classifier


# Most specific first: a two-stage classifier holds a classifier's keys and more.
VARIANTS: dict[str, Variant] = {
    "training state": Variant("progress", ("model", "ema", "optimizer", "scheduler", "progress"),
                              "a training state (last.pt)", "train --resume", "training state"),
    "orientation check": Variant("orientations", ("model", "model_name", "image_size", "orientations"),
                                 "an orientation-check checkpoint", "predict, serve, explain (built in)",
                                 "orientation check"),
    "segmenter": Variant("model_name", ("model", "model_name", "image_size", "normalise"),
                         "a lung segmenter checkpoint", "segment --model", "segmenter"),
    "two-stage classifier": Variant("head", (*CLASSIFIER_KEYS, "head", "fit"), "a two-stage classifier checkpoint",
                                    CLASSIFIER_VERBS, "classifier"),
    "classifier": Variant("classes", CLASSIFIER_KEYS, "a classifier checkpoint", CLASSIFIER_VERBS, "classifier"),
}


def checkpoint_variant(state: dict[str, Any]) -> str | None:
    """The name in :data:`VARIANTS` of what a checkpoint holds (None: none of them)."""
    return next((name for name, variant in VARIANTS.items() if variant.marker in state), None)


def _missing(state: dict[str, Any], variant: str, version: int = VERSION) -> list[str]:
    return [key for key in VARIANTS[variant].required if key not in state and SINCE.get(key, 1) <= version]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write one of :data:`VARIANTS`, stamped with :data:`VERSION`, atomically: an interrupted save never leaves a
    half-written checkpoint behind. A state of no variant, or missing a required key, is a bug: ValueError."""
    variant = checkpoint_variant(state)
    if variant is None or _missing(state, variant):
        raise ValueError(f"not a lungscope checkpoint layout: keys {sorted(state)} (variant {variant})")
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({**state, VERSION_KEY: VERSION}, tmp)
    os.replace(tmp, path)


def _not_a_checkpoint(path: Path, reason: str) -> ConfigError:
    return ConfigError(f"{path}: not a lungscope checkpoint ({reason})")


def load_checkpoint(path: str | Path, kind: Kind | None = None) -> dict[str, Any]:
    """Load safely (no pickled code) onto the CPU. A missing, foreign or corrupt file, one written by a newer
    lungscope, one missing a key its variant requires, or one of another ``kind`` than asked for raises a one-line
    :class:`ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is never unpickled
        raise _not_a_checkpoint(path, "an empty file" if path.stat().st_size == 0 else
                                "not a PyTorch archive: another kind of file, or a truncated one")
    try:
        with warnings.catch_warnings():  # torch warns about pickle details the user cannot act on
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise _not_a_checkpoint(path, "it holds objects other than tensors and plain values, refused: loading "
                                "them could run code") from None
    except Exception as error:  # noqa: BLE001 - torch raises several types for a corrupt archive
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise _not_a_checkpoint(path, f"a corrupt PyTorch archive: {first_line[:120]}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise _not_a_checkpoint(path, "no 'model' weights")
    version = state.get(VERSION_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _not_a_checkpoint(path, f"its {VERSION_KEY!r} is {version!r}, not a version number")
    if version > VERSION:
        raise ConfigError(f"{path}: made by a newer lungscope (checkpoint version {version}; this one reads up to "
                          f"{VERSION}): upgrade lungscope to load it")
    found = checkpoint_variant(state)
    if found is None:
        if kind is not None:
            raise _not_a_checkpoint(path, f"weights without the {VARIANTS[kind].marker!r} of {VARIANTS[kind].what}")
        markers = ", ".join(repr(variant.marker) for variant in VARIANTS.values())
        raise _not_a_checkpoint(path, f"weights of no known layout: none of {markers}")
    variant = VARIANTS[found]
    if kind is not None and variant.kind != kind:
        raise ConfigError(f"{path}: {variant.what} (for lungscope {variant.verbs}), not {VARIANTS[kind].what}")
    if missing := _missing(state, found, version):
        raise ConfigError(f"{path}: {variant.what} without its {', '.join(map(repr, missing))}: damaged, or not "
                          "written by lungscope")
    return state
