"""The orientation check: the eight orientations, its trainer and checkpoint, and the bundled check on real X-rays it
never trained on (every turned or inverted view refused, every upright one answered) and on pictures that are not
chest X-rays (refused as such)."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from sklearn.datasets import load_sample_images

from lungscope.bundled import ORIENTATION
from lungscope.checkpoint import load_checkpoint
from lungscope.data.io import read_image
from lungscope.data.plausibility import ImplausibleImageError
from lungscope.errors import ConfigError
from lungscope.orientation import (
    _COMPOSED,
    NOT_RECOGNISED,
    ORIENTATIONS,
    RECOGNISED_AT,
    REFUSE_AT,
    OrientationCheck,
    default_check,
    describe,
    orient,
    read_upright,
    recognition,
    without_borders,
)
from lungscope.training.orientation import OrientationConfig, train_orientation
from test_predict import _dicom


def test_orientations_are_the_eight_distinct_views_and_zero_is_as_is() -> None:
    image = torch.rand(1, 5, 7)  # not square, not symmetric
    views = [orient(image, k) for k in range(len(ORIENTATIONS))]
    assert torch.equal(views[0], image) and len(ORIENTATIONS) == 8
    assert torch.equal(views[ORIENTATIONS.index((1, False))], torch.rot90(image, 1, dims=(-2, -1)))
    assert torch.allclose(views[ORIENTATIONS.index((0, True))], 1 - image)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8


def test_describe_says_what_is_wrong_and_what_to_do() -> None:
    assert describe(ORIENTATIONS.index((2, False))) == "it looks upside down; turn it half round"
    assert describe(ORIENTATIONS.index((0, True))) == "it looks a negative (lungs bright); invert its grey scale"
    assert describe(ORIENTATIONS.index((1, True))) == (
        "it looks turned a quarter anticlockwise and a negative (lungs bright); turn it a quarter clockwise and "
        "invert its grey scale")


def test_trainer_writes_a_checkpoint_only_the_orientation_check_loads(lung_masks: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((lung_masks / "images").glob("*.png"))[:24]:
        (images / path.name).write_bytes(path.read_bytes())
    summary = train_orientation([images], tmp_path / "run", OrientationConfig(epochs=1, batch_size=8), progress=False)
    assert summary["images"] == {"train": 18, "val": 3, "test": 3} and summary["test"]["accuracy"] >= 0
    check = OrientationCheck.load(tmp_path / "run")
    assert check.views([np.random.default_rng(0).random((90, 70), dtype=np.float32)]).shape == (1, 8, 8)
    assert 0 <= summary["test"]["not_recognised"] <= 1
    assert len(load_checkpoint(tmp_path / "run" / "best.pt", kind="orientation check")["test_images"]) == 3
    with pytest.raises(ConfigError, match="orientation-check checkpoint"):
        load_checkpoint(tmp_path / "run" / "best.pt", kind="segmenter")


@pytest.fixture(scope="module")
def held_out(chest_xray: Path, lung_masks: Path) -> list[np.ndarray]:
    """20 X-rays of the bundled check's held-out patients: 10 children, 10 adults."""
    names = load_checkpoint(ORIENTATION, kind="orientation check")["test_images"]
    children = [n for n in names if n.endswith(".jpeg")][:10]
    adults = [n for n in names if n.endswith(".png")][:10]
    paths = [next((chest_xray / "train").glob(f"*/{n}")) for n in children] + [lung_masks / "images" / n
                                                                                 for n in adults]
    assert len(paths) == 20
    return [read_image(p).pixels for p in paths]


def test_bundled_check_refuses_every_turned_or_inverted_held_out_xray(held_out: list[np.ndarray]) -> None:
    """Upright: answered; otherwise refused as turned or inverted, never as not an X-ray (the check recognises an
    X-ray in any orientation: recognition at least 0.98 on its held-out X-rays, against RECOGNISED_AT 0.45)."""
    check = default_check()
    for k in range(len(ORIENTATIONS)):
        shown = [orient(torch.from_numpy(x), k).numpy() for x in held_out]
        probabilities = check.views(shown)
        reasons = [check.problem(x) for x in shown]
        assert (recognition(probabilities)[:, k] >= RECOGNISED_AT).all()
        if k == 0:
            assert reasons == [None] * len(shown), probabilities[:, 0, 0].min()
        else:
            assert all(r is not None and r.startswith(describe(k)) for r in reasons), reasons
            assert (probabilities[:, 0, k] >= REFUSE_AT).all()


def test_composed_orientations_follow_the_views() -> None:
    """Showing an image that is in orientation j in orientation k gives the orientation _COMPOSED[k, j]."""
    image = torch.rand(1, 6, 6)
    for k, j in np.ndindex(len(ORIENTATIONS), len(ORIENTATIONS)):
        assert torch.allclose(orient(orient(image, j), k), orient(image, int(_COMPOSED[k, j])))


def test_without_borders_trims_uniform_bands_of_any_grey_on_each_edge_and_inside_each_other() -> None:
    inner = np.random.default_rng(0).random((60, 40), dtype=np.float32)
    framed = np.pad(np.pad(inner, ((0, 0), (7, 0)), constant_values=0.5), ((0, 0), (0, 3)), constant_values=0.01)
    framed = np.pad(np.pad(framed, ((5, 0), (0, 0))), ((0, 12), (0, 0)), constant_values=1.0)
    framed[-12:] -= np.random.default_rng(1).uniform(0, 0.015, (12, 50)).astype(np.float32)  # JPEG-like noise
    assert np.array_equal(without_borders(framed), inner)
    assert np.array_equal(without_borders(inner), inner)
    blank = np.full((50, 50), 0.3, np.float32)
    assert without_borders(blank) is blank
    mostly_band = np.pad(inner[:20, :20], ((0, 40), (0, 20)))  # what is left would be a sixth of it: kept whole
    assert without_borders(mostly_band) is mostly_band


def test_without_borders_judges_a_large_film_on_a_subsample_and_never_cuts_into_it() -> None:
    inner = np.random.default_rng(0).random((1800, 1500), dtype=np.float32)
    padded = np.pad(inner, ((0, 701), (302, 0)))  # 2,501 x 1,802: judged on every fourth row and column
    trimmed = without_borders(padded)
    assert trimmed.shape[0] - 1800 in range(4) and trimmed.shape[1] - 1500 in range(4)
    assert np.array_equal(trimmed[:1800, -1500:], inner)
    assert without_borders(np.zeros((2000, 2000), np.float32)).shape == (2000, 2000)


def test_an_xray_with_a_band_a_frame_or_a_letterbox_is_recognised_as_it_is(held_out: list[np.ndarray],
                                                                           lung_masks: Path) -> None:
    """Montgomery's films in the shared set have a black band below the chest (recognition 0.25 before the check
    trimmed it: the least of all 5,779 shared X-rays); framed or letterboxed X-rays, as exported or screen-captured,
    are answered as the X-ray itself (benchmarks/results/orientation.md)."""
    check = default_check()
    banded = read_image(lung_masks / "images" / "MCUCXR_0052_0.png").pixels
    assert (banded[-40:] == 0).all() and without_borders(banded).shape[0] < banded.shape[0] - 40
    assert recognition(check.views([banded]))[0, 0] >= 0.9
    for grey in (0.0, 0.5, 1.0):
        for sides in ((0.1, 0.1), (0.39, 0.0)):
            shown = [np.pad(x, [(round(s * n),) * 2 for s, n in zip(sides[::-1], x.shape)], constant_values=grey)
                     for x in held_out]
            assert [check.problem(x) for x in shown] == [None] * len(shown), (grey, sides)


def _pictures() -> dict[str, np.ndarray]:
    """Pictures that are not chest X-rays, from the libraries installed: a CT and an MR slice, noise, photographs."""
    dicoms = Path(pydicom.__file__).parent / "data" / "test_files"
    with gzip.open(Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz") as raw:
        slice_ = np.frombuffer(raw.read(), np.uint16).reshape(256, 256).astype(np.float32)
    return {"CT": read_image(dicoms / "693_J2KI.dcm").pixels, "MR head": slice_ / slice_.max(),
            "noise": np.random.default_rng(0).random((300, 300), dtype=np.float32),
            "portrait": read_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").pixels,
            **{name: (photo.mean(axis=2) / 255).astype(np.float32)
               for name, photo in zip(("temple", "flower"), load_sample_images().images)}}


def test_pictures_that_are_not_chest_xrays_are_refused() -> None:
    """The CT, MR and noise, recognised at 0.000-0.097 (benchmarks/results/orientation.md; upright X-rays at least
    0.98, RECOGNISED_AT 0.45), as not a chest X-ray; the photographs too, or, in the orientation the check finds in
    them, as turned."""
    check = default_check()
    reasons = {name: check.problem(pixels) for name, pixels in _pictures().items()}
    assert all(why is not None for why in reasons.values()), reasons
    assert all(reasons[name].startswith(NOT_RECOGNISED) for name in ("CT", "MR head", "noise")), reasons


def test_read_upright_refuses_a_ct_slice_by_its_header_or_else_by_its_look(tmp_path: Path) -> None:
    ct = Path(pydicom.__file__).parent / "data" / "test_files" / "693_J2KI.dcm"
    with pytest.raises(ImplausibleImageError, match=r"not a usable chest X-ray: the DICOM header says Modality CT "
                                                    r"\(computed tomography\); lungscope reads frontal"):
        read_upright(ct)
    unsaid = pydicom.dcmread(ct)
    del unsaid.Modality  # a header that does not say what it is: the pixels are judged
    unsaid.save_as(tmp_path / "ct.dcm")
    with pytest.raises(ImplausibleImageError, match="not a usable chest X-ray: it does not look like a chest X-ray: "
                                                    "the orientation check cannot tell which way up it is"):
        read_upright(tmp_path / "ct.dcm")


def test_a_real_adult_chest_film_from_elsewhere_is_read_and_a_tibia_film_refused(tmp_path: Path) -> None:
    """Two computed radiographs from outside the shared data (pydicom-data; MONOCHROME1, about 1,900 pixels a side):
    an adult chest PA is read upright, its lossy JPEG 2000 copy too; a tibia is refused by its header (EXTREMITY)
    and, with that field removed, by its look: the first X-ray of another body part the check was shown."""
    chest = read_upright(get_testdata_file("RG1_UNCR.dcm"))
    assert chest.meta["inverted"] == "MONOCHROME1 to MONOCHROME2" and chest.info.height == 1955
    lossy = read_upright(get_testdata_file("RG1_J2KI.dcm")).pixels
    assert np.abs(lossy - chest.pixels).mean() < 0.01
    tibia = get_testdata_file("RG3_UNCR.dcm")
    with pytest.raises(ImplausibleImageError, match="the DICOM header says BodyPartExamined EXTREMITY"):
        read_upright(tibia)
    unsaid = pydicom.dcmread(tibia)
    del unsaid.BodyPartExamined
    unsaid.save_as(tmp_path / "tibia.dcm")
    with pytest.raises(ImplausibleImageError, match="it does not look like a chest X-ray"):
        read_upright(tmp_path / "tibia.dcm")


@pytest.mark.parametrize(("header", "refused"), [
    ({"Modality": "DX", "ViewPosition": "PA", "BodyPartExamined": "CHEST"}, None),
    ({"Modality": "CR", "ViewPosition": "AP LLD"}, None),  # a decubitus view is a frontal projection
    ({"Modality": "OT", "BodyPartExamined": "PORT CHEST"}, None),  # terms not listed: judged by the pixels
    ({"Modality": "MG"}, "Modality MG (mammography)"),
    ({"Modality": "DX", "ViewPosition": "LL"}, "ViewPosition LL (a lateral view)"),
    ({"Modality": "CR", "ViewPosition": "XTABLE_LATERAL"}, "ViewPosition XTABLE LATERAL (a lateral view)"),
    ({"Modality": "DX", "ViewPosition": "RAO"}, "ViewPosition RAO (an oblique view)"),
    ({"Modality": "DX", "BodyPartExamined": "KNEE"}, "BodyPartExamined KNEE"),
])
def test_read_upright_refuses_a_dicom_whose_header_says_it_is_no_frontal_chest_radiograph(
    chest_xray: Path, tmp_path: Path, header: dict[str, str], refused: str | None
) -> None:
    """The same upright X-ray as a DICOM file: read, unless its header names another modality, view or part."""
    pixels = read_image(sorted((chest_xray / "train" / "NORMAL").glob("*.jpeg"))[0]).pixels
    ds = pydicom.dcmread(_dicom(tmp_path / "x.dcm", np.rint(pixels * 4095)))
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.save_as(path := tmp_path / "x.dcm")
    if refused is None:
        np.testing.assert_allclose(read_upright(path).pixels, pixels, atol=1 / 4095)
    else:
        with pytest.raises(ImplausibleImageError, match=rf"not a usable chest X-ray: the DICOM header says "
                                                        rf"{re.escape(refused)}; lungscope reads frontal"):
            read_upright(path)
        assert read_image(path).meta  # the file itself reads: only the check refuses it


def test_read_upright_refuses_a_sideways_file_and_predict_says_why(chest_xray: Path, tmp_path: Path) -> None:
    source = sorted((chest_xray / "train" / "NORMAL").glob("*.jpeg"))[0]
    upright, sideways = tmp_path / "upright.png", tmp_path / "sideways.png"
    Image.open(source).convert("L").save(upright)
    Image.open(source).convert("L").rotate(90, expand=True).save(sideways)  # anticlockwise, as np.rot90
    assert read_upright(upright).pixels.shape == (224, 224)
    expected = "not a usable chest X-ray: it looks turned a quarter anticlockwise; turn it a quarter clockwise"
    with pytest.raises(ImplausibleImageError, match=expected):
        read_upright(sideways)
    done = subprocess.run([sys.executable, "-m", "lungscope.cli", "predict", str(upright), str(sideways)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"{sideways}: not a usable chest X-ray: it looks turned a quarter anticlockwise" in done.stdout
    assert f"{upright}: NORMAL" in done.stdout or f"{upright}: PNEUMONIA" in done.stdout
