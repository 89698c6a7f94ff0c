"""The models lungscope ships, by the names every verb's MODEL argument accepts; their cards lie beside them."""

from __future__ import annotations

import os
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
MODELS = {"default": FOLDER / "pneumonia.pt", "tb": FOLDER / "tb.pt"}
CXR_BACKBONE = FOLDER / "lungscope-cxr.pt"  # pretrained: lungscope-cxr, which default and tb were fine-tuned from
TASKS = {"default": "pneumonia, children", "tb": "tuberculosis, adults"}  # what each answers, for help texts
SEGMENTER = FOLDER / "lung-unet.pt"
ORIENTATION = FOLDER / "orientation.pt"  # lungscope.orientation's check: upright, turned, inverted


def bundled_model(source: str | os.PathLike[str]) -> Path | None:
    """The checkpoint of the bundled model ``source`` names, or None: not a name of :data:`MODELS`, or a file or
    folder of that name exists (a user's own run is never shadowed)."""
    name = str(source)
    return MODELS[name] if name in MODELS and not Path(name).exists() else None
