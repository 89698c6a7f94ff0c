"""Tests for lungscope.data.transforms: preprocessing, augmentation and class balancing."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight
from torchvision.transforms.v2 import functional as F

from lungscope.data.transforms import (
    AugmentConfig,
    Clahe,
    Preprocessing,
    ResizeImage,
    build_transforms,
    class_weights,
    weighted_sampler,
)
from lungscope.errors import ConfigError, DatasetError

NO_MOTION = dict(rotation=0.0, scale=(1.0, 1.0), shift=0.0, brightness=0.0, contrast=0.0)


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), np.float32) / 255


@pytest.fixture(scope="module")
def normal_images(chest_xray: Path) -> list[np.ndarray]:
    """The first five real NORMAL training images, as read_image would give them."""
    return [_load(p) for p in sorted((chest_xray / "train" / "NORMAL").glob("*.jpeg"))[:5]]


@pytest.fixture()
def tall() -> np.ndarray:
    """A made-up non-square (300 high, 200 wide) image in [0, 1]."""
    return np.random.default_rng(0).random((300, 200), dtype=np.float32)


def _local_contrast(image: np.ndarray, window: int = 9) -> float:
    """Mean standard deviation of the pixels in a window around each pixel."""
    mean = cv2.blur(image, (window, window))
    variance = cv2.blur(image * image, (window, window)) - mean * mean
    return float(np.sqrt(np.clip(variance, 0, None)).mean())


def _identity_normalised(size: int, **kwargs: object) -> Callable[[np.ndarray], torch.Tensor]:
    """An eval pipeline whose normalisation does nothing, so outputs are the resized pixels."""
    return build_transforms(size, train=False, mean=0.0, std=1.0, **kwargs)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("resize", ["squash", "pad"])
def test_output_shape_and_dtype_on_non_square_input(tall: np.ndarray, resize: str, train: bool) -> None:
    out = build_transforms(64, train=train, resize=resize)(tall)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 64, 64)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_an_array_with_non_finite_values_is_refused_not_answered_nan(tall: np.ndarray, bad: float) -> None:
    """Through the Python API (Classifier.predict_arrays) such an array was answered with NaN probabilities."""
    image = tall.copy()
    image[3, 4] = bad
    with pytest.raises(ValueError, match="non-finite values"):
        build_transforms(64, train=False)(image)


def test_input_array_is_not_modified(tall: np.ndarray) -> None:
    before = tall.copy()
    build_transforms(64, train=True, clahe=True)(tall)
    np.testing.assert_array_equal(tall, before)


def test_pad_letterboxes_a_tall_image_keeping_its_aspect(tall: np.ndarray) -> None:
    out = _identity_normalised(60, resize="pad")(tall)[0]
    # 300x200 scaled to 60x40, centred: columns 0-9 and 50-59 are black padding.
    assert torch.all(out[:, :10] == 0) and torch.all(out[:, 50:] == 0)
    expected = F.resize(torch.from_numpy(tall)[None], [60, 40], antialias=True)[0]
    torch.testing.assert_close(out[:, 10:50], expected)


def test_pad_letterboxes_a_wide_image_top_and_bottom() -> None:
    wide = np.ones((100, 400), np.float32)
    out = _identity_normalised(80, resize="pad")(wide)[0]
    rows = torch.nonzero(out.amax(dim=1) > 0).flatten()
    assert (rows.min().item(), rows.max().item()) == (30, 49)  # 100x400 -> 20x80, centred in 80 rows
    torch.testing.assert_close(out[30:50], torch.ones(20, 80))


def test_squash_fills_the_square_ignoring_aspect(tall: np.ndarray) -> None:
    out = _identity_normalised(60, resize="squash")(np.ones_like(tall))
    torch.testing.assert_close(out, torch.ones(1, 60, 60))


def test_pad_on_a_real_cropped_image_preserves_content(normal_images: list[np.ndarray]) -> None:
    crop = normal_images[0][:, 37:187]  # 224 high, 150 wide
    out = ResizeImage(112, "pad")(torch.from_numpy(crop)[None])
    assert out.shape == (1, 112, 112)
    # 150 wide -> 75 wide; the 37 columns of padding split 18 left, 19 right.
    assert torch.all(out[0, :, :18] == 0) and torch.all(out[0, :, 93:] == 0)
    expected = F.resize(torch.from_numpy(crop)[None], [112, 75], antialias=True)
    torch.testing.assert_close(out[:, :, 18:93], expected)


def test_clahe_raises_contrast_of_a_low_contrast_image() -> None:
    rows, cols = np.mgrid[0:128, 0:128].astype(np.float32)
    flat = 0.45 + 0.1 * (rows / 127) + 0.02 * np.sin(cols / 3)  # values within [0.43, 0.57]
    out = Clahe()(flat)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == flat.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 1.3 * flat.std()
    assert _local_contrast(out) > 2 * _local_contrast(flat)


def test_clahe_keeps_tensor_type_and_shape() -> None:
    image = torch.linspace(0.4, 0.6, 64 * 48).reshape(1, 64, 48)
    out = Clahe(clip_limit=3.0, tile_grid=4)(image)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 64, 48) and out.dtype == torch.float32
    assert out.std() > image.std()


def test_clahe_raises_local_contrast_of_real_x_rays(normal_images: list[np.ndarray]) -> None:
    for image in normal_images:
        out = Clahe()(image)
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert _local_contrast(out) > 1.3 * _local_contrast(image)


def test_pipeline_applies_clahe_before_resizing(normal_images: list[np.ndarray]) -> None:
    image = normal_images[1]
    out = _identity_normalised(96, clahe=True)(image)
    expected = ResizeImage(96)(torch.from_numpy(Clahe()(image))[None])
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, _identity_normalised(96)(image))


def test_eval_pipeline_is_deterministic_and_ignores_augment(normal_images: list[np.ndarray]) -> None:
    transform = build_transforms(128, train=False, clahe=True, augment=AugmentConfig(rotation=45))
    first = transform(normal_images[2])
    torch.testing.assert_close(transform(normal_images[2]), first, rtol=0, atol=0)
    torch.testing.assert_close(build_transforms(128, train=False, clahe=True)(normal_images[2]), first)


def test_train_pipeline_varies_but_repeats_under_the_same_seed(normal_images: list[np.ndarray]) -> None:
    transform = build_transforms(128, train=True)
    image = normal_images[3]
    torch.manual_seed(123)
    first, second = transform(image), transform(image)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, build_transforms(128, train=False)(image))
    torch.manual_seed(123)
    torch.testing.assert_close(transform(image), first, rtol=0, atol=0)
    torch.testing.assert_close(transform(image), second, rtol=0, atol=0)


def test_train_without_augment_uses_defaults(normal_images: list[np.ndarray]) -> None:
    image = normal_images[0]
    torch.manual_seed(7)
    default = build_transforms(64, train=True)(image)
    torch.manual_seed(7)
    explicit = build_transforms(64, train=True, augment=AugmentConfig())(image)
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)


def test_motionless_augment_without_flip_is_the_identity(normal_images: list[np.ndarray]) -> None:
    image = normal_images[4]
    still = build_transforms(64, train=True, augment=AugmentConfig(**NO_MOTION))
    plain = build_transforms(64, train=False)(image)
    torch.manual_seed(0)
    for _ in range(10):
        torch.testing.assert_close(still(image), plain, rtol=0, atol=1e-5)


def test_hflip_is_off_by_default_and_flips_when_asked(normal_images: list[np.ndarray]) -> None:
    assert AugmentConfig().hflip is False
    image = normal_images[4]
    plain = build_transforms(64, train=False)(image)
    flipping = build_transforms(64, train=True, augment=AugmentConfig(hflip=True, **NO_MOTION))
    torch.manual_seed(0)
    outs = [flipping(image) for _ in range(20)]
    flipped = [torch.allclose(o, plain.flip(-1), atol=1e-5) for o in outs]
    kept = [torch.allclose(o, plain, atol=1e-5) for o in outs]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_normalisation_gives_expected_mean_and_std() -> None:
    halves = np.zeros((64, 64), np.float32)
    halves[:, 32:] = 1.0  # mean 0.5, population std 0.5
    out = build_transforms(64, train=False, mean=0.5, std=0.25)(halves)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out.std(unbiased=False).item() == pytest.approx(2.0, abs=1e-5)
    constant = build_transforms(32, train=False, mean=0.2, std=0.5)(np.full((50, 70), 0.7, np.float32))
    torch.testing.assert_close(constant, torch.ones(1, 32, 32))


def test_channels_three_repeats_the_single_channel(normal_images: list[np.ndarray]) -> None:
    image = normal_images[0]
    single = build_transforms(64, train=False, clahe=True)(image)
    triple = build_transforms(64, train=False, clahe=True, channels=3)(image)
    assert triple.shape == (3, 64, 64) and triple.dtype == torch.float32
    for channel in triple:
        torch.testing.assert_close(channel[None], single)


def test_pipeline_survives_pickling_for_dataloader_workers(normal_images: list[np.ndarray]) -> None:
    transform = build_transforms(64, train=True, clahe=True, channels=3)
    clone = pickle.loads(pickle.dumps(transform))
    torch.manual_seed(5)
    expected = transform(normal_images[0])
    torch.manual_seed(5)
    torch.testing.assert_close(clone(normal_images[0]), expected, rtol=0, atol=0)


def test_class_weights_match_sklearn_on_the_real_label_counts(chest_xray: Path) -> None:
    classes = ["NORMAL", "PNEUMONIA"]
    labels = [name for name in classes for _ in (chest_xray / "train" / name).iterdir()]
    assert (labels.count("NORMAL"), labels.count("PNEUMONIA")) == (1341, 3875)
    weights = class_weights(labels, classes)
    assert weights.dtype == torch.float32
    expected = compute_class_weight("balanced", classes=np.array(classes), y=np.array(labels))
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(weights.numpy(), [5216 / (2 * 1341), 5216 / (2 * 3875)], rtol=1e-6)
    indices = [classes.index(label) for label in labels]
    torch.testing.assert_close(class_weights(indices, classes), weights)
    torch.testing.assert_close(class_weights(labels, classes[::-1]), weights.flip(0))


def test_a_class_without_labels_is_named_in_the_error() -> None:
    with pytest.raises(DatasetError, match="'TUBERCULOSIS'"):
        class_weights(["NORMAL", "PNEUMONIA"], ["NORMAL", "PNEUMONIA", "TUBERCULOSIS"])
    with pytest.raises(DatasetError, match="'COVID'"):
        weighted_sampler(["NORMAL", "COVID"], ["NORMAL", "PNEUMONIA"])
    with pytest.raises(DatasetError, match="out of range"):
        class_weights([0, 1, 2], ["NORMAL", "PNEUMONIA"])


def test_weighted_sampler_balances_classes_reproducibly() -> None:
    labels = ["minority"] * 10 + ["majority"] * 90
    sampler = weighted_sampler(labels, ["minority", "majority"], num_samples=10_000, seed=3)
    draws = list(sampler)
    assert len(draws) == 10_000
    minority_fraction = sum(index < 10 for index in draws) / len(draws)
    assert 0.45 <= minority_fraction <= 0.55
    again = list(weighted_sampler(labels, ["minority", "majority"], num_samples=10_000, seed=3))
    other = list(weighted_sampler(labels, ["minority", "majority"], num_samples=10_000, seed=4))
    assert draws == again and draws != other
    assert len(list(weighted_sampler(labels, ["minority", "majority"]))) == len(labels)


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_transforms(0, train=False),
        lambda: build_transforms(-5, train=True),
        lambda: build_transforms(224.0, train=False),
        lambda: build_transforms(224, train=False, resize="crop"),
        lambda: build_transforms(224, train=False, std=0.0),
        lambda: build_transforms(224, train=False, channels=0),
        lambda: AugmentConfig(rotation=-1),
        lambda: AugmentConfig(rotation=270),
        lambda: AugmentConfig(scale=(1.2, 0.8)),
        lambda: AugmentConfig(scale=(0.0, 1.0)),
        lambda: AugmentConfig(scale=(0.9,)),
        lambda: AugmentConfig(shift=1.5),
        lambda: AugmentConfig(brightness=-0.1),
        lambda: AugmentConfig(contrast=2.0),
        lambda: Clahe(clip_limit=0),
        lambda: Clahe(tile_grid=0),
        lambda: class_weights([], []),
        lambda: class_weights(["a", "b"], ["a", "a", "b"]),
        lambda: weighted_sampler(["a", "b"], ["a", "b"], num_samples=0),
    ],
)
def test_bad_parameters_raise_config_error(make: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        make()


def test_augment_config_accepts_a_yaml_list_for_scale() -> None:
    assert AugmentConfig(scale=[0.8, 1.2]).scale == (0.8, 1.2)  # type: ignore[arg-type]


def test_preprocessing_is_read_from_a_checkpoint_with_or_without_its_own_entry() -> None:
    from lungscope.bundled import bundled_model
    from lungscope.checkpoint import load_checkpoint
    from lungscope.inference import Classifier

    state = load_checkpoint(bundled_model("default"), kind="classifier")
    spec = Preprocessing.of_checkpoint(state)  # the bundled file predates the entry: read from its config
    assert (spec.image_size, spec.normalise, spec.roi) == (state["image_size"], state["config"]["normalise"], "none")
    assert Preprocessing.of_checkpoint({"preprocessing": spec.to_dict()}) == spec
    with pytest.warns(UserWarning, match="trained with roi 'none'"):
        classifier = Classifier.load("default", roi="lungs")
    assert classifier.preprocessing == dataclasses.replace(spec, roi="lungs") and classifier.roi is not None


@pytest.mark.parametrize(("change", "message"), [
    ({"roi": "heart"}, "roi must be one of none, lungs, not 'heart'"), ({"normalise": "z"}, "normalise must be one of"),
    ({"image_size": 4}, "image_size must be at least 8"), ({"image_size": 64.0}, "'image_size' must be an integer"),
    ({"roi_margin": 1.5}, "roi_margin must be in"),
])
def test_preprocessing_refuses_what_it_cannot_do(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Preprocessing(**{"image_size": 64, **change})


def test_preprocessing_builds_the_pipeline_inference_uses() -> None:
    spec = Preprocessing(32, resize="pad", normalise="per-image")
    pixels = np.random.default_rng(0).random((40, 20), dtype=np.float32)
    out = spec.augment_normalise()(spec.preprocess()(pixels))
    assert out.shape == (1, 32, 32)
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(out.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
