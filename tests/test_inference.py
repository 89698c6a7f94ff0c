"""A trained run loaded back as a classifier predicts files, keeps their order and reports bad ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lungscope.data.io import read_image
from lungscope.inference import Classifier


@pytest.fixture(scope="module")
def run(quick_run: Path) -> Path:
    return quick_run


def test_files_match_arrays_and_bad_files_are_reported(run: Path, chest_xray: Path, tmp_path: Path) -> None:
    classifier = Classifier.load(run)
    assert classifier.classes == ["NORMAL", "PNEUMONIA"] and classifier.image_size == 64
    real = (sorted((chest_xray / "train" / "PNEUMONIA").iterdir())[:5]
            + sorted((chest_xray / "train" / "NORMAL").iterdir())[:5])
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    paths = [str(p) for p in real[:3]] + [str(broken)] + [str(p) for p in real[3:]]
    predictions = list(classifier.predict_files(paths, batch_size=4))
    assert [p.path for p in predictions] == paths
    assert predictions[3].probabilities is None and "not an image" in predictions[3].error
    good = [p.probabilities for p in predictions if p.error is None]
    expected = classifier.predict_arrays([read_image(p).pixels for p in real])
    np.testing.assert_allclose(np.stack(good), expected, atol=1e-5)
    np.testing.assert_allclose(expected.sum(axis=1), 1, atol=1e-5)


def test_load_from_checkpoint_file_equals_run_folder(run: Path) -> None:
    image = np.random.default_rng(0).random((300, 250), dtype=np.float32)
    from_dir = Classifier.load(run).predict_arrays([image])
    from_file = Classifier.load(run / "best.pt").predict_arrays([image])
    np.testing.assert_array_equal(from_dir, from_file)


def test_foreign_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from lungscope.errors import ConfigError

    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not a lungscope checkpoint"):
        Classifier.load(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not found"):
        Classifier.load(tmp_path / "missing")
