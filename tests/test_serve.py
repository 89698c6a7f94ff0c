"""The web API and the clinician's page, with the bundled model."""

from __future__ import annotations

import itertools
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from lungscope.cli import main
from lungscope.data.io import XRay, read_image
from lungscope.evaluation.formatting import format_probability
from lungscope.inference import Classifier
from lungscope.serve import app as serve_app
from lungscope.serve import create_app
from lungscope.serve.app import default_allowed_hosts, display_name
from test_predict import _dicom

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "PNEUMONIA" / "person1057_bacteria_2991.jpeg"


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load("default")


@pytest.fixture(scope="module")
def client(classifier: Classifier) -> TestClient:
    return TestClient(create_app(classifier, model_name="default", max_upload=2_000_000))


def _upload(path: Path, name: str | None = None) -> dict:
    return {"file": (name or path.name, path.read_bytes(), "application/octet-stream")}


def test_predict_matches_the_python_api(client: TestClient, classifier: Classifier) -> None:
    answer = client.post("/api/predict", files=_upload(SAMPLE)).json()
    assert set(answer) == {"probability", "prediction", "threshold", "model"}
    expected = classifier.predict_arrays([read_image(SAMPLE).pixels])[0, 1]
    assert answer["probability"] == pytest.approx(float(expected), abs=1e-6)
    assert answer["prediction"] == ("PNEUMONIA" if expected >= classifier.threshold else "NORMAL")
    assert answer["threshold"] == pytest.approx(classifier.threshold)


def test_explain_returns_an_overlay_at_the_image_size(client: TestClient, tmp_path: Path) -> None:
    wide = tmp_path / "wide.png"
    Image.fromarray((read_image(SAMPLE).pixels * 255).astype(np.uint8)).resize((300, 200)).save(wide)
    for view, mode in (("overlay", "RGB"), ("heatmap", "RGBA")):
        response = client.post("/api/explain", files=_upload(wide), data={"method": "gradcam", "view": view})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        image = Image.open(__import__("io").BytesIO(response.content))
        assert image.size == (300, 200) and image.mode == mode
    assert client.post("/api/explain", files=_upload(wide), data={"method": "magic"}).status_code == 400


def test_dicom_upload_predicts_like_the_jpeg(client: TestClient, tmp_path: Path) -> None:
    dicom = _dicom(tmp_path / "study", np.rint(read_image(SAMPLE).pixels * 4095))
    from_dicom = client.post("/api/predict", files=_upload(dicom)).json()["probability"]
    from_jpeg = client.post("/api/predict", files=_upload(SAMPLE)).json()["probability"]
    assert from_dicom == pytest.approx(from_jpeg, abs=0.02)
    assert client.post("/api/image", files=_upload(dicom)).status_code == 200


def test_bad_uploads(client: TestClient, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    response = client.post("/api/predict", files=_upload(text))
    assert response.status_code == 415 and "not an image" in response.json()["detail"]
    truncated = tmp_path / "cut.jpeg"
    truncated.write_bytes(SAMPLE.read_bytes()[:3000])
    assert client.post("/api/predict", files=_upload(truncated)).status_code == 400
    big = {"file": ("big.png", b"\0" * 3_000_000, "image/png")}
    response = client.post("/api/predict", files=big)
    assert response.status_code == 413 and "MB" in response.json()["detail"]
    assert client.post("/api/predict").status_code == 422  # no file field


@pytest.mark.parametrize("request_options", [
    {},  # no body
    {"data": {"file": "text, not a file"}},
    {"files": {"image": ("a.jpeg", SAMPLE.read_bytes())}},  # another field's name
    {"files": {"file": ("", SAMPLE.read_bytes())}},  # no file name: a text field holding the whole upload
])
@pytest.mark.parametrize("endpoint", ["/api/predict", "/api/explain", "/api/image"])
def test_malformed_form_is_one_line_and_never_echoes_the_upload(client: TestClient, endpoint: str,
                                                                  request_options: dict[str, Any]) -> None:
    response = client.post(endpoint, **request_options)
    assert response.status_code == 422 and len(response.content) < 200
    assert response.json() == {"detail": "file: expected an image file (a multipart form field named 'file', "
                                         "with a file name)"}


def test_malformed_parameters_are_one_line_naming_them(client: TestClient) -> None:
    upload = _upload(SAMPLE)
    response = client.post("/api/explain", files=upload, data={"alpha": "half"})
    assert response.status_code == 422 and response.json()["detail"].startswith("alpha: Input should be a valid number")
    response = client.post("/api/explain", files=upload, data={"method": "x" * 100_000})
    assert response.status_code == 400 and len(response.json()["detail"]) < 250


def test_upside_down_upload_is_refused_with_what_to_do_but_still_shown(client: TestClient, tmp_path: Path) -> None:
    flipped = tmp_path / "flipped.png"
    Image.open(SAMPLE).convert("L").rotate(180).save(flipped)
    for endpoint in ("/api/predict", "/api/explain"):
        response = client.post(endpoint, files=_upload(flipped))
        assert response.status_code == 400
        assert response.json()["detail"].startswith(
            "flipped.png: not a usable chest X-ray: it looks upside down; turn it half round")
    assert client.post("/api/image", files=_upload(flipped)).status_code == 200


@pytest.fixture()
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own temporary folder for the server's uploads: another pytest worker's uploads come and go in
    the shared one meanwhile."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_concurrent_requests_and_nothing_left_on_disk(client: TestClient, own_tmp: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: client.post("/api/predict", files=_upload(SAMPLE)).json(), range(16)))
        maps = list(pool.map(lambda _: client.post("/api/explain", files=_upload(SAMPLE)).status_code, range(6)))
    assert len({a["probability"] for a in answers}) == 1 and maps == [200] * 6
    assert not any(own_tmp.iterdir())


def test_uploads_are_read_two_at_a_time_however_many_arrive(classifier: Classifier,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading one upload can hold half a gigabyte, so requests arriving together are read DECODE_SLOTS at a time
    (and all answered); without the bound, twelve at once are read together."""
    reading, most, lock = [0], [0], threading.Lock()

    def counted(reader: Callable[[Path], XRay]) -> Callable[[Path], XRay]:
        def read(path: Path) -> XRay:
            with lock:
                reading[0] += 1
                most[0] = max(most[0], reading[0])
            try:
                time.sleep(0.1)
                return reader(path)
            finally:
                with lock:
                    reading[0] -= 1
        return read

    monkeypatch.setattr(serve_app, "read_upright", counted(serve_app.read_upright))
    monkeypatch.setattr(serve_app, "read_image", counted(serve_app.read_image))
    client = TestClient(create_app(classifier))
    endpoints = ["/api/predict", "/api/image", "/api/explain"] * 4
    with ThreadPoolExecutor(max_workers=len(endpoints)) as pool:
        codes = list(pool.map(lambda url: client.post(url, files=_upload(SAMPLE)).status_code, endpoints))
    assert codes == [200] * len(endpoints) and most[0] == serve_app.DECODE_SLOTS == 2


def test_openapi_docs(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    assert {"/api/predict", "/api/explain"} <= set(client.get("/openapi.json").json()["paths"])


@pytest.fixture(scope="module")
def server(classifier: Classifier) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(classifier, model_name="default", max_upload=2_000_000)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


def test_page_end_to_end_in_chromium(server: str, chromium, tmp_path: Path) -> None:
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(server + "/")
        page.wait_for_function("document.querySelectorAll('#method option').length > 0")
        for value in (0.5, 0.123456, 0.9997, 0.99940, 1e-9, 1 - 1e-9, 0.0, 1.0):  # the page writes as Python does
            assert page.evaluate(f"formatProbability({value!r})") == format_probability(value)
        page.set_input_files("#files", [str(SAMPLE), str(REPO / "samples" / "NORMAL" / "IM-0133-0001.jpeg")])
        page.wait_for_function("document.querySelectorAll('#worklist li .prob').length === 2 && "
                               "[...document.querySelectorAll('#worklist li .prob')]"
                               ".every(e => /^[0-9.]+$/.test(e.textContent))")
        page.wait_for_function("document.getElementById('heat').naturalWidth > 0", timeout=60_000)
        probabilities = [float(t) for t in page.locator("#worklist li .prob").all_text_contents()]
        assert probabilities == sorted(probabilities, reverse=True)  # the worklist puts the likeliest first
        verdict = page.locator("#verdict").text_content()
        assert re.search(r": (PNEUMONIA|NORMAL), P\(PNEUMONIA\) = [0-9.]+ \(threshold [0-9.]+\)$", verdict), verdict
        page.locator("#opacity").fill("0.8")
        assert page.eval_on_selector("#heat", "e => e.style.opacity") == "0.8"
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert (tmp_path / "page.png").stat().st_size > 10_000
    finally:
        page.close()


def _multipart(name: bytes, chunks: Iterable[bytes], sent: list[int] | None = None) -> dict[str, Any]:
    """Request arguments for a hand-made multipart body with one ``file`` field named ``name`` byte for byte (a
    client library would escape it), streamed from ``chunks`` without Content-Length; ``sent`` counts what left."""
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n\r\n'

    def body() -> Iterator[bytes]:
        for part in itertools.chain([head], chunks, [b"\r\n--b--\r\n"]):
            if sent is not None:
                sent[0] += len(part)
            yield part

    return {"content": body(), "headers": {"content-type": "multipart/form-data; boundary=b"}}


def test_chunked_upload_is_refused_once_past_the_cap(server: str, own_tmp: Path) -> None:
    """No Content-Length: the server counts the bytes as they arrive and answers 413 long before the end."""
    sent = [0]
    zeros = (b"\0" * (1 << 20) for _ in range(64))
    response = httpx.post(server + "/api/predict", **_multipart(b"z.png", zeros, sent), timeout=60)
    assert sent[0] < 16 << 20  # the cap (2 MB) plus what the sockets' buffers held, not the 64 MB offered
    assert response.status_code == 413 and response.json() == {"detail": "upload larger than 1.90735 MB"}
    assert not any(own_tmp.iterdir())


@pytest.mark.parametrize("name", ["..", "x/..", "a\0b.png", "é" * 200 + ".png", "/etc/passwd", "C:\\x\\..\\y.png"])
def test_upload_names_are_never_paths(server: str, name: str) -> None:
    raw = name.encode()
    assert httpx.post(server + "/api/predict", **_multipart(raw, [SAMPLE.read_bytes()])).status_code == 200
    response = httpx.post(server + "/api/predict", **_multipart(raw, [b"not an image"]))
    assert response.status_code == 415
    shown = response.json()["detail"].split(": ")[0]
    assert shown == display_name(name) and len(shown) <= 120


def test_display_name() -> None:
    assert [display_name(n) for n in ("..", "x/..", "a\0b.png", "C:\\dir\\scan.dcm", None, "")] == [
        "..", "..", "ab.png", "scan.dcm", "upload", "upload"]
    assert display_name("é" * 300) == "é" * 119 + "…"


def test_openapi_declares_the_error_answers(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/api/predict", "/api/explain", "/api/image"):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "400", "413", "415", "422"} <= set(responses)
        for code in ("413", "422"):
            schema_of = responses[code]["content"]["application/json"]["schema"]
            assert schema_of == {"$ref": "#/components/schemas/ErrorBody"}
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["detail"]


def test_hosts_outside_the_allow_list_get_400(classifier: Classifier) -> None:
    app = create_app(classifier, allowed_hosts=default_allowed_hosts("127.0.0.1"))
    assert TestClient(app, base_url="http://localhost:8000").get("/api/info").status_code == 200
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/info").status_code == 200
    assert TestClient(app, base_url="http://attacker.example:8000").get("/api/info").status_code == 400
    assert default_allowed_hosts("0.0.0.0") == ["0.0.0.0", "localhost", "127.0.0.1"]


def test_predictions_during_explanations_all_succeed(client: TestClient) -> None:
    """Predictions run while explanations' hooks are attached: each must answer 200 (they share no model)."""
    jobs = [("/api/explain", {"method": m}) for m in ("gradcam", "guided-gradcam", "integrated-gradients", "gradcam")]
    jobs = [job for pair in itertools.zip_longest(jobs, [("/api/predict", {})] * 8) for job in pair if job]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        codes = list(pool.map(lambda job: client.post(job[0], files=_upload(SAMPLE), data=job[1]).status_code, jobs))
    assert codes == [200] * 12


def test_a_prediction_inside_an_explanation_leaves_it_intact() -> None:
    """Deterministic form of the race: a prediction runs while the explanation's attribution hooks are attached."""
    classifier = Classifier.load("default")
    pixels = read_image(SAMPLE).pixels

    def predict_meanwhile(*_: object) -> None:
        """After each forward pass with gradients (an explanation's), a prediction, as another request would make."""
        if torch.is_grad_enabled():
            classifier.predict_arrays([pixels])

    classifier.model.register_forward_hook(predict_meanwhile)
    client = TestClient(create_app(classifier))
    for method in ("gradcam", "guided-gradcam"):
        assert client.post("/api/explain", files=_upload(SAMPLE), data={"method": method}).status_code == 200


@pytest.mark.parametrize(("flags", "answered", "refused"), [
    ([], ["localhost", "127.0.0.1"], ["rebind.example"]),
    (["--allowed-host", "scanner.example", "--allowed-host", "pacs.example"], ["scanner.example", "pacs.example"],
     ["localhost", "rebind.example"]),
])
def test_serve_allowed_host_option(monkeypatch: pytest.MonkeyPatch, flags: list[str], answered: list[str],
                                   refused: list[str]) -> None:
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    assert main(["serve", "--port", "8123", *flags]) == 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123)
    for host, status in [(h, 200) for h in answered] + [(h, 400) for h in refused]:
        assert TestClient(served["app"], base_url=f"http://{host}:8123").get("/api/info").status_code == status


@pytest.mark.parametrize("megabytes", ["0", "-1", "nan", "inf"])
def test_serve_refuses_an_upload_limit_that_is_not_a_positive_number(
    megabytes: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(uvicorn, "run", lambda *_, **__: pytest.fail("the server must not start"))
    assert main(["serve", "--max-upload-mb", megabytes]) == 1
    assert capsys.readouterr().err.strip() == ("lungscope serve: error: --max-upload-mb must be a positive number of "
                                               f"megabytes, not {float(megabytes)}")


_VISIBLE_IMAGES = "[...document.images].filter(i => i.checkVisibility()).map(i => i.id)"


def test_page_states_in_chromium(server: str, chromium, tmp_path: Path) -> None:
    """The empty page shows no image; a failed upload after a good one shows its error and none of the images; a
    refused X-ray shows its reason and the X-ray as uploaded, without a map."""
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    sideways = tmp_path / "sideways.png"
    with Image.open(SAMPLE) as opened:
        upright = opened.size
        opened.convert("L").rotate(90, expand=True).save(sideways)
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(server + "/")
        page.wait_for_function("document.querySelectorAll('#method option').length > 0")
        assert page.evaluate(_VISIBLE_IMAGES) == []
        assert page.get_attribute("#viewer", "data-state") == "empty"
        page.set_input_files("#files", [str(SAMPLE)])
        page.wait_for_function("document.getElementById('viewer').dataset.state === 'result' && "
                               "document.getElementById('heat').naturalWidth > 0", timeout=60_000)
        assert page.evaluate(_VISIBLE_IMAGES) == ["xray", "heat"] and page.is_enabled("#method")
        page.set_input_files("#files", [str(bad)])
        page.wait_for_function("document.getElementById('viewer').dataset.state === 'error'", timeout=60_000)
        assert page.evaluate(_VISIBLE_IMAGES) == []
        assert page.evaluate("[...document.images].map(i => i.getAttribute('src'))") == [None, None]
        assert page.text_content("#verdict").startswith("notes.png: not an image")
        assert "P(" not in page.text_content("#verdict")  # none of the previous patient's numbers
        page.set_input_files("#files", [str(sideways)])  # refused, but readable: shown as read, without a map
        page.wait_for_function("document.getElementById('viewer').dataset.state === 'refused' && "
                               "document.getElementById('xray').naturalWidth > 0", timeout=60_000)
        assert page.evaluate(_VISIBLE_IMAGES) == ["xray"]
        assert page.is_disabled("#method") and page.is_disabled("#opacity")  # no map to choose or fade
        labels = page.eval_on_selector_all("#worklist .prob", "labels => labels.map(label => label.textContent)")
        assert sorted(labels)[-2:] == ["error", "refused"]  # notes.png could not be read; sideways.png was refused
        assert page.eval_on_selector("#xray", "e => [e.naturalWidth, e.naturalHeight]") == list(reversed(upright))
        assert page.text_content("#verdict").startswith("sideways.png: not a usable chest X-ray: "
                                                        "it looks turned a quarter")
    finally:
        page.close()
