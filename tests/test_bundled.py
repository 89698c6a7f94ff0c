"""The bundled models by name: ``default`` (pneumonia) and ``tb`` (tuberculosis) in every verb that takes a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lungscope.bundled import MODELS, bundled_model
from lungscope.cli import main
from lungscope.data.io import read_image
from lungscope.inference import Classifier, checkpoint_path
from lungscope.serve import create_app


def test_names_resolve_to_the_bundled_checkpoints_unless_a_path_of_that_name_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert checkpoint_path("tb") == MODELS["tb"] and checkpoint_path("default") == MODELS["default"]
    assert bundled_model("pneumonia.pt") is None and checkpoint_path("runs/x") == Path("runs/x")
    (tmp_path / "tb").mkdir()
    shutil.copy(MODELS["default"], tmp_path / "tb" / "best.pt")  # a user's run folder called tb
    assert bundled_model("tb") is None and checkpoint_path("tb") == Path("tb") / "best.pt"


def test_the_bundled_tb_model_answers_tuberculosis(lung_masks: Path, tmp_path: Path) -> None:
    tb = Classifier.load("tb")
    assert tb.classes == ["NORMAL", "TUBERCULOSIS"] and tb.image_size == 288
    paths = sorted((lung_masks / "images").glob("*.png"))[::40]  # both sites, both labels
    labels = [int(path.stem.endswith("_1")) for path in paths]
    probabilities = tb.predict_arrays([read_image(path).pixels for path in paths])
    assert probabilities.shape == (len(paths), 2)
    # trained on these images (any split), it must rank them better than chance
    positives = [p[1] for p, y in zip(probabilities, labels) if y]
    negatives = [p[1] for p, y in zip(probabilities, labels) if not y]
    assert sum(a > b for a in positives for b in negatives) / (len(positives) * len(negatives)) > 0.7


@pytest.mark.parametrize("verb", ["predict", "explain", "explain --model"])
def test_model_tb_is_selectable_on_the_command_line(verb: str, lung_masks: Path, tmp_path: Path) -> None:
    image = next((lung_masks / "images").glob("CHNCXR_*_1.png"))
    out = tmp_path / "out"
    if verb == "predict":
        code = main(["predict", "--model", "tb", str(image), "--json", str(tmp_path / "rows.json")])
        rows = json.loads((tmp_path / "rows.json").read_text())
        assert code == 0 and rows[0]["prediction"] in {"NORMAL", "TUBERCULOSIS"}
    else:  # the model first, or as --model (predict's and serve's way)
        model = ["--model", "tb"] if verb == "explain --model" else ["tb"]
        code = main(["explain", *model, str(image), "--out", str(out)])
        maps = np.load(out / "maps.npz")
        assert code == 0 and {maps[key].shape for key in maps.files} == {(288, 288)}  # the tb model's input size


def test_model_tb_is_selectable_in_the_server(lung_masks: Path) -> None:
    client = TestClient(create_app(Classifier.load("tb"), model_name="tb"))
    image = next((lung_masks / "images").glob("MCUCXR_*_1.png"))
    answer = client.post("/api/predict", files={"file": (image.name, image.read_bytes(), "image/png")})
    assert answer.status_code == 200 and "TUBERCULOSIS" in json.dumps(answer.json())
