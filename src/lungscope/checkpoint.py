"""Checkpoints: plain dicts of tensors and primitives, so ``torch.load(..., weights_only=True)`` reads them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lungscope.errors import ConfigError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write atomically: an interrupted save never leaves a half-written checkpoint behind."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load safely (no pickled code) onto the CPU; a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign or corrupt files
        raise ConfigError(f"{path}: not a readable lungscope checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ConfigError(f"{path}: not a lungscope checkpoint (no 'model' weights)")
    return state
