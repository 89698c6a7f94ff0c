"""The checkpoint schema: every variant round-trips with its version, and each kind of bad file is a one-line error."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from lungscope.bundled import CXR_BACKBONE, MODELS, ORIENTATION, SEGMENTER
from lungscope.checkpoint import (
    VARIANTS,
    VERSION,
    VERSION_KEY,
    Kind,
    checkpoint_variant,
    load_checkpoint,
    save_checkpoint,
)
from lungscope.errors import ConfigError

WEIGHTS = {"layer.weight": torch.ones(2, 3)}
# A made-up state of every variant, with exactly its required keys.
STATES: dict[str, dict[str, Any]] = {
    "training state": {"model": WEIGHTS, "ema": None, "optimizer": {"state": {}}, "scheduler": None,
                       "progress": {"epoch": 1}},
    "segmenter": {"model": WEIGHTS, "model_name": "lung-unet", "image_size": 64, "normalise": "fixed"},
    "orientation check": {"model": WEIGHTS, "model_name": "five-block-cnn", "image_size": 150,
                          "orientations": [[0, False], [1, False]]},
    "two-stage classifier": {"model": WEIGHTS, "config": {"model": "two-stage"}, "classes": ["A", "B"],
                             "image_size": 64, "preprocessing": {"image_size": 64}, "head": "dense",
                             "fit": {"best_epoch": 1}},
    "classifier": {"model": WEIGHTS, "config": {"model": "shallow-cnn"}, "classes": ["A", "B"], "image_size": 64,
                   "preprocessing": {"image_size": 64}},
}


def test_every_variant_has_a_made_up_state() -> None:
    assert set(STATES) == set(VARIANTS)
    assert all(sorted(STATES[name]) == sorted(variant.required) for name, variant in VARIANTS.items())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_saved_variant_loads_with_the_current_version(variant: str, tmp_path: Path) -> None:
    save_checkpoint(STATES[variant], tmp_path / "x.pt")
    state = load_checkpoint(tmp_path / "x.pt", kind=VARIANTS[variant].kind)
    assert state[VERSION_KEY] == VERSION and checkpoint_variant(state) == variant
    assert torch.equal(state["model"]["layer.weight"], WEIGHTS["layer.weight"])


@pytest.mark.parametrize(("path", "version", "variant"), [
    (MODELS["default"], VERSION, "classifier"), (MODELS["tb"], VERSION, "classifier"),
    (CXR_BACKBONE, None, "classifier"), (SEGMENTER, None, "segmenter"), (ORIENTATION, VERSION, "orientation check"),
])
def test_the_bundled_checkpoints_load(path: Path, version: int | None, variant: str) -> None:
    """Today's files and those written before the version key (version 1) alike."""
    state = load_checkpoint(path, kind=VARIANTS[variant].kind)
    assert state.get(VERSION_KEY) == version and checkpoint_variant(state) == variant


def test_save_refuses_a_state_missing_a_required_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a lungscope checkpoint layout"):
        save_checkpoint({k: v for k, v in STATES["classifier"].items() if k != "image_size"}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def _one_line_error(path: Path, kind: Kind | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_checkpoint(path, kind=kind)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(("content", "reason"), [
    ({"weights": WEIGHTS}, "no 'model' weights"),
    ({"model": WEIGHTS, "epoch": 3}, "weights of no known layout"),
    ({**STATES["classifier"], VERSION_KEY: "two"}, "its 'lungscope_checkpoint' is 'two', not a version number"),
], ids=["no-model", "no-variant", "bad-version"])
def test_a_foreign_file_is_refused(content: dict[str, Any], reason: str, tmp_path: Path) -> None:
    torch.save(content, tmp_path / "x.pt")
    assert _one_line_error(tmp_path / "x.pt").startswith(f"not a lungscope checkpoint ({reason}")


def test_a_corrupt_archive_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "x.pt", "w") as archive:
        archive.writestr("x/data.pkl", b"not a pickle")
    assert _one_line_error(tmp_path / "x.pt").startswith("not a lungscope checkpoint (a corrupt PyTorch archive: ")


def test_a_newer_version_is_refused(tmp_path: Path) -> None:
    torch.save({**STATES["classifier"], VERSION_KEY: VERSION + 1}, tmp_path / "x.pt")
    assert _one_line_error(tmp_path / "x.pt", "classifier") == (
        f"made by a newer lungscope (checkpoint version {VERSION + 1}; this one reads up to {VERSION}): upgrade "
        "lungscope to load it")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_variant_missing_a_required_key_is_refused(variant: str, tmp_path: Path) -> None:
    for key in VARIANTS[variant].required:
        if key in (VARIANTS[variant].marker, "model"):
            continue  # without its marker it is another variant, or none; without weights, foreign
        torch.save({**{k: v for k, v in STATES[variant].items() if k != key}, VERSION_KEY: VERSION}, tmp_path / "x.pt")
        assert _one_line_error(tmp_path / "x.pt") == (
            f"{VARIANTS[variant].what} without its {key!r}: damaged, or not written by lungscope")


@pytest.mark.parametrize("variant", ["classifier", "two-stage classifier"])
def test_a_version_1_classifier_needs_no_preprocessing_entry(variant: str, tmp_path: Path) -> None:
    old = {k: v for k, v in STATES[variant].items() if k != "preprocessing"}
    torch.save(old, tmp_path / "x.pt")  # no version key: version 1, written before the entry existed
    assert "preprocessing" not in load_checkpoint(tmp_path / "x.pt", kind="classifier")
    torch.save({**old, VERSION_KEY: VERSION}, tmp_path / "x.pt")
    assert _one_line_error(tmp_path / "x.pt") == (
        f"{VARIANTS[variant].what} without its 'preprocessing': damaged, or not written by lungscope")


def test_a_segmenter_before_version_3_needs_no_normalise_entry(tmp_path: Path) -> None:
    old = {k: v for k, v in STATES["segmenter"].items() if k != "normalise"}
    for version in (1, 2):  # written before segmenters could be normalised per image: all were "fixed"
        torch.save({**old, VERSION_KEY: version}, tmp_path / "x.pt")
        assert "normalise" not in load_checkpoint(tmp_path / "x.pt", kind="segmenter")
    torch.save({**old, VERSION_KEY: 3}, tmp_path / "x.pt")
    assert _one_line_error(tmp_path / "x.pt") == (
        "a lung segmenter checkpoint without its 'normalise': damaged, or not written by lungscope")
