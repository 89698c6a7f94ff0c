"""Lung segmentation: mask clean-up and scores, the U-Net, the bundled segmenter on held-out real masks, the
``segment`` and ``train-segmenter`` verbs, and the ``roi: lungs`` crop with explanations drawn back on the X-ray."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from lungscope.checkpoint import load_checkpoint
from lungscope.cli import main
from lungscope.data.io import read_image, read_mask
from lungscope.data.transforms import build_preprocess
from lungscope.errors import ConfigError
from lungscope.explain.views import map_to_image
from lungscope.inference import Classifier
from lungscope.models import create_model
from lungscope.segmentation import (
    DEFAULT_SEGMENTER,
    LungCrop,
    LungSegmenter,
    clean_mask,
    dice,
    iou,
    lung_box,
)
from lungscope.training import TrainConfig, train
from lungscope.training.segmenter import SegmenterConfig, train_segmenter


def _held_out(lung_masks: Path, n: int) -> list[str]:
    """Names of the first ``n`` images the bundled segmenter never trained on (its checkpoint's test split)."""
    names = load_checkpoint(DEFAULT_SEGMENTER)["split"]["test"]
    assert names and all((lung_masks / "images" / name).is_file() for name in names)
    return names[:n]


def test_clean_mask_keeps_two_largest_regions_and_fills_holes() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:30, 3:15] = True  # left lung
    mask[5:30, 22:37] = True  # right lung
    mask[10:14, 6:10] = False  # a hole in the left lung
    mask[35:37, 35:37] = True  # a speck
    cleaned = clean_mask(mask)
    assert cleaned[10:14, 6:10].all() and not cleaned[35:37, 35:37].any()
    assert cleaned.sum() == 25 * 12 + 25 * 15
    assert not clean_mask(np.zeros((8, 8))).any()


def test_lung_box_margin_clipping_and_empty() -> None:
    mask = np.zeros((100, 200), dtype=bool)
    mask[20:80, 10:190] = True
    assert lung_box(mask, margin=0.0) == (20, 10, 80, 190)
    assert lung_box(mask, margin=0.1) == (10, 0, 90, 200)  # 10 rows, 20 columns added; columns clipped
    assert lung_box(np.zeros((50, 50), dtype=bool)) is None
    tiny = np.zeros((100, 100), dtype=bool)
    tiny[0, 0] = True
    assert lung_box(tiny) is None  # 0.01% of the image is not a pair of lungs


def test_dice_and_iou() -> None:
    a = np.zeros((4, 4), dtype=bool)
    b = np.zeros((4, 4), dtype=bool)
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert dice(a, b) == pytest.approx(0.5) and iou(a, b) == pytest.approx(4 / 12)
    assert dice(a, a) == 1.0 and iou(a, ~a) == 0.0
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_unet_shapes_and_input_check() -> None:
    model = create_model("lung-unet", num_classes=1)
    assert model(torch.zeros(2, 1, 64, 96)).shape == (2, 1, 64, 96)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(1, 1, 60, 64))
    with pytest.raises(ConfigError, match="base"):
        create_model("lung-unet", num_classes=1, base=0)


def test_bundled_segmenter_on_held_out_real_masks(lung_masks: Path) -> None:
    segmenter = LungSegmenter.load()
    scores = []
    for name in _held_out(lung_masks, 12):
        truth = read_mask(lung_masks / "masks" / name)
        predicted = segmenter.mask(read_image(lung_masks / "images" / name).pixels)
        assert predicted.shape == truth.shape and predicted.dtype == bool
        scores.append(dice(predicted, truth))
    assert np.mean(scores) > 0.9, scores


def test_segmenter_works_at_any_resolution(lung_masks: Path) -> None:
    name = _held_out(lung_masks, 1)[0]
    pixels = read_image(lung_masks / "images" / name).pixels
    truth = read_mask(lung_masks / "masks" / name)
    wide = cv2.resize(pixels, (384, 300), interpolation=cv2.INTER_AREA)  # not square, not the training size
    mask = LungSegmenter.load().mask(wide)
    assert mask.shape == (300, 384)
    back = cv2.resize(mask.astype(np.uint8), truth.shape[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
    assert dice(back, truth) > 0.85


def test_lung_crop_keeps_the_lungs(lung_masks: Path) -> None:
    crop = LungCrop(margin=0.05)
    for name in _held_out(lung_masks, 5):
        pixels = read_image(lung_masks / "images" / name).pixels
        truth = read_mask(lung_masks / "masks" / name)
        top, left, bottom, right = crop.box(pixels)
        assert (bottom - top) * (right - left) < 0.9 * truth.size  # it does crop
        assert truth[top:bottom, left:right].sum() >= 0.98 * truth.sum()  # and keeps the lungs
        cropped = crop(torch.as_tensor(pixels)[None])
        assert cropped.shape == (1, bottom - top, right - left)
    blank = torch.zeros(1, 64, 64)  # nothing to find: the image is kept whole
    assert crop.box(blank) is None and crop(blank).shape == (1, 64, 64)


def test_roi_preprocess_and_map_back(lung_masks: Path) -> None:
    name = _held_out(lung_masks, 1)[0]
    pixels = read_image(lung_masks / "images" / name).pixels
    assert build_preprocess(64, roi="lungs")(pixels).shape == (1, 64, 64)
    with pytest.raises(ConfigError, match="roi"):
        build_preprocess(64, roi="heart")
    box = LungCrop().box(pixels)
    full = map_to_image(np.ones((64, 64), dtype=np.float32), pixels.shape, box=box)
    top, left, bottom, right = box
    assert full.shape == pixels.shape
    assert np.allclose(full[top:bottom, left:right], 1) and full.sum() == pytest.approx((bottom - top) * (right - left))


def test_segment_cli_writes_masks_and_overlays(lung_masks: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    names = _held_out(lung_masks, 2)
    big = tmp_path / "big.png"  # another resolution than the set's 256x256
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(lung_masks / "images" / names[0])), (320, 400)))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    sideways = tmp_path / "sideways.png"  # refused as predict refuses it, and so is a film of a tibia
    cv2.imwrite(str(sideways), cv2.rotate(cv2.imread(str(lung_masks / "images" / names[0])), cv2.ROTATE_90_CLOCKWISE))
    tibia = get_testdata_file("RG3_UNCR.dcm")
    out = tmp_path / "out"
    code = main(["segment", str(lung_masks / "images" / names[1]), str(big), str(bad), str(sideways), tibia,
                 "--out", str(out)])
    assert code == 2  # the broken and refused files are reported, the others are written
    err = capsys.readouterr().err
    assert f"{sideways}: not a usable chest X-ray: it looks turned a quarter clockwise" in err
    assert f"{tibia}: not a usable chest X-ray: the DICOM header says BodyPartExamined EXTREMITY" in err
    assert sorted(path.name for path in (out / "masks").iterdir()) == sorted([names[1], "big.png"])
    for stem, shape in ((Path(names[1]).stem, (256, 256)), ("big", (400, 320))):
        mask = cv2.imread(str(out / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == shape and set(np.unique(mask)) == {0, 255}
        assert 0.1 < (mask == 255).mean() < 0.6
        assert cv2.imread(str(out / "overlays" / f"{stem}.png")).shape == (*shape, 3)
    assert not (out / "masks" / "broken.png").exists()


def test_train_segmenter_on_a_slice(lung_masks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for path in sorted((lung_masks / "images").glob("*.png"))[:14]:
        shutil.copy(path, images)  # copies: symlinks out of a folder are skipped by design
        shutil.copy(lung_masks / "masks" / path.name, masks)
    config = SegmenterConfig(image_size=32, epochs=2, batch_size=4, val_fraction=0.2, test_fraction=0.2)
    summary = train_segmenter(images, masks, tmp_path / "run", config, progress=False)
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")
    split = checkpoint["split"]
    assert sum(summary["images"].values()) == 14 and not set(split["train"]) & set(split["test"])
    assert 0 <= summary["test_dice_p5"] <= summary["test_dice_mean"] <= 1
    assert LungSegmenter.load(tmp_path / "run").mask(np.random.rand(50, 40)).shape == (50, 40)
    with pytest.raises(ConfigError, match="multiple of 8"):
        SegmenterConfig(image_size=30)
    assert main(["train-segmenter", str(images), str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1
    assert main(["train-segmenter", str(images), str(masks), "--out", str(tmp_path / "y"), "--epochs", "0"]) == 1
    assert "epochs must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_a_cxr_unet_segmenter_starts_from_lungscope_cxr_and_keeps_its_normalisation(
    lung_masks: Path, tmp_path: Path
) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for path in sorted((lung_masks / "images").glob("*.png"))[:10]:
        shutil.copy(path, images)
        shutil.copy(lung_masks / "masks" / path.name, masks)
    config = SegmenterConfig(model="cxr-unet", pretrained="lungscope-cxr", normalise="per-image", image_size=224,
                             epochs=1, batch_size=4, val_fraction=0.2, test_fraction=0.2)
    train_segmenter(images, masks, tmp_path / "run", config, progress=False)
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt", kind="segmenter")
    assert checkpoint["normalise"] == "per-image" and checkpoint["model_name"] == "cxr-unet"
    segmenter = LungSegmenter.load(tmp_path / "run")
    assert segmenter.normalisation == "per-image" and LungSegmenter.load().normalisation == "fixed"  # older file
    pixels = read_image(next(images.iterdir())).pixels
    # Per-image normalisation: a linear change of the grey levels leaves the mask as it was.
    assert np.array_equal(segmenter.mask(pixels), segmenter.mask(0.2 + 0.5 * pixels))
    with pytest.raises(ConfigError, match="learnt on 224x224 images normalised per-image; this run has image_size "
                                          "128, normalise fixed: set image_size: 224 \\(or larger\\), "
                                          "normalise: per-image"):
        SegmenterConfig(model="cxr-unet", pretrained="lungscope-cxr")
    with pytest.raises(ConfigError, match="lung-unet has no pretrained encoder"):
        SegmenterConfig(pretrained="lungscope-cxr")


def test_roi_model_trains_predicts_and_explains_on_the_full_image(lung_masks: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=str(lung_masks / "images"), labels="tb", out=str(tmp_path / "run"), model="shallow-cnn",
                         roi="lungs", limit=60, epochs=1, seed=0)
    train(config, progress=False)
    classifier = Classifier.load(tmp_path / "run")
    image = lung_masks / "images" / _held_out(lung_masks, 1)[0]
    assert classifier.crop_box(read_image(image).pixels) is not None
    out = tmp_path / "explained"
    assert main(["explain", str(tmp_path / "run"), str(image), "--out", str(out)]) == 0
    maps = np.load(out / "maps.npz")
    assert maps[f"{image.stem}/gradcam"].shape == (64, 64)
    with pytest.warns(UserWarning, match="trained with roi 'lungs'"):
        plain = Classifier.load(tmp_path / "run", roi="none")
    assert plain.crop_box(read_image(image).pixels) is None


def test_trainer_refuses_the_segmentation_net(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train-segmenter"):
        train(TrainConfig(data=str(tmp_path), model="lung-unet", out=str(tmp_path / "run")), progress=False)


def test_explain_check_uses_the_segmenter_without_masks(lung_masks: Path, quick_run: Path, tmp_path: Path) -> None:
    from lungscope.explain.files import check_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = check_files(quick_run, lung_masks / "images", tmp_path / "check.json", n=3, methods=["gradcam"])
    assert report["masks"] == "lung-unet segmenter"
    assert 0.1 < report["lung_area_fraction"] < 0.6
    assert 0 <= report["methods"]["gradcam"]["lung_share"] <= 1
