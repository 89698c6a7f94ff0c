"""Checkpoints: plain dicts of tensors and primitives, so ``torch.load(..., weights_only=True)`` reads them."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from lungscope.errors import ConfigError

# kind: (a key only its checkpoints hold, what such a file is, the verbs that take it)
KINDS = {
    "classifier": ("classes", "a classifier checkpoint", "predict, evaluate, explain, features, serve, export"),
    "segmenter": ("model_name", "a lung segmenter checkpoint", "segment --model"),
    "training state": ("progress", "a training state (last.pt)", "train --resume"),
}


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write atomically: an interrupted save never leaves a half-written checkpoint behind."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _not_a_checkpoint(path: Path, reason: str) -> ConfigError:
    return ConfigError(f"{path}: not a lungscope checkpoint ({reason})")


def checkpoint_kind(state: dict[str, Any]) -> str | None:
    """``classifier``, ``segmenter`` or ``training state``: what a loaded checkpoint holds (None: none of these)."""
    return next((kind for kind, (key, _, _) in KINDS.items() if key in state), None)


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load safely (no pickled code) onto the CPU. A missing, foreign or corrupt file, or one of another ``kind``
    than asked for (see :data:`KINDS`), raises a one-line :class:`ConfigError` naming the file."""
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
    found = checkpoint_kind(state)
    if kind is not None and found != kind:
        if found is None:
            raise _not_a_checkpoint(path, f"weights without the {KINDS[kind][0]!r} of {KINDS[kind][1]}")
        raise ConfigError(f"{path}: {KINDS[found][1]} (for lungscope {KINDS[found][2]}), not {KINDS[kind][1]}")
    return state
