"""Shared fixtures: the real public data beside the checkout (``../shared/data``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Headless Chromium fixtures (``chromium``, ``browser_page``): one browser per session for every test module.
pytest_plugins = ["browser"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LUNGSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; tests that need it skip without it, except on CI where its absence fails."""
    if not (SHARED_DATA / "chest_xray" / "train").is_dir():
        message = f"shared data not found at {SHARED_DATA} (set LUNGSCOPE_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def chest_xray(shared_data: Path) -> Path:
    """The pediatric pneumonia set: ``train/NORMAL`` and ``train/PNEUMONIA``."""
    return shared_data / "chest_xray"


@pytest.fixture(scope="session")
def lung_masks(shared_data: Path) -> Path:
    """The Montgomery/Shenzhen tuberculosis set: ``images/`` and ``masks/``."""
    return shared_data / "lung_masks"


@pytest.fixture(scope="session")
def quick_run(chest_xray: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real run, trained once per session: shallow-cnn on ~300 shared images (patient-grouped), 2 epochs."""
    from lungscope.training import TrainConfig, train

    out = tmp_path_factory.mktemp("quick_run") / "run"
    config = TrainConfig(data=str(chest_xray / "train"), out=str(out), model="shallow-cnn", limit=300, epochs=2, seed=1)
    train(config, progress=False)
    return out


@pytest.fixture(scope="session")
def xray_slice(chest_xray: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """21 files in class folders: 10 shared images per class and ``NORMAL/IM-9999-0001.jpeg``, made up and corrupt."""
    root = tmp_path_factory.mktemp("xray_slice")
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir()
        for f in sorted((chest_xray / "train" / label).iterdir())[:10]:
            shutil.copy(f, root / label / f.name)
    (root / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root
