"""FastAPI app: one page to drop X-rays on, and the API behind it.

``POST /api/predict`` (multipart ``file``) -> ``{"probability", "prediction", "threshold", "model"}``;
``POST /api/explain`` (``file``, form ``method``, ``view`` overlay|heatmap, ``alpha``) -> PNG;
``POST /api/image`` (``file``) -> the X-ray as a grayscale PNG (browsers cannot show DICOM).
Uploads live in a temporary folder for the length of one request; nothing is kept after the answer.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from lungscope.data.io import XRay, read_image
from lungscope.errors import ConfigError, ImageReadError
from lungscope.explain.api import explain as explain_batch
from lungscope.explain.base import METHODS
from lungscope.explain.views import heatmap_rgba, map_to_image, overlay, signed_view
from lungscope.inference import Classifier

DEFAULT_MAX_UPLOAD = 50 * 1024 * 1024
_CHUNK = 1 << 20


def _png(array: np.ndarray) -> Response:
    """A PNG response of a uint8 array, or of a float array in [0, 1]."""
    if array.dtype != np.uint8:
        array = np.rint(np.clip(array, 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")


def map_on_image(classifier: Classifier, pixels: np.ndarray, method: str) -> np.ndarray:
    """The positive part of ``method``'s map for the class the model calls, on the X-ray's own pixel grid, in [0, 1]."""
    inputs = classifier.transform(pixels)[None]
    target = classifier.decide(classifier.probabilities(classifier.model(inputs)))
    explanation = explain_batch(classifier.model, inputs, method, target=target.tolist(), warn=False)
    return map_to_image(signed_view(explanation.maps[0]), pixels.shape, classifier.resize, classifier.crop_box(pixels))


def create_app(classifier: Classifier, *, model_name: str = "model", max_upload: int = DEFAULT_MAX_UPLOAD) -> FastAPI:
    """The app serving ``classifier``. ``max_upload`` bytes per request; larger uploads get 413."""
    app = FastAPI(title="lungscope", description="Chest X-ray screening with the map of where the model looked.")
    explain_lock = threading.Lock()  # attribution hooks live on the shared model: one explanation at a time

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):  # before the body is read or spooled anywhere
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload:
            return JSONResponse({"detail": f"upload larger than {max_upload // (1024 * 1024)} MB"}, status_code=413)
        return await call_next(request)

    @contextmanager
    def uploaded(upload: UploadFile) -> Iterator[XRay]:
        """The upload read as an X-ray; the file exists only inside this block."""
        with tempfile.TemporaryDirectory(prefix="lungscope-upload-") as folder:
            path = Path(folder) / (Path(upload.filename or "upload").name or "upload")
            size = 0
            with path.open("wb") as handle:
                while chunk := upload.file.read(_CHUNK):
                    size += len(chunk)
                    if size > max_upload:
                        raise HTTPException(413, f"upload larger than {max_upload // (1024 * 1024)} MB")
                    handle.write(chunk)
            try:
                yield read_image(path)
            except ImageReadError as error:
                status = 415 if error.reason.startswith(("not an image", "unsupported")) else 400
                raise HTTPException(status, f"{upload.filename}: {error.reason}") from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return files("lungscope.serve").joinpath("page.html").read_text()

    @app.get("/api/info")
    def info() -> dict[str, object]:
        """The model, its classes, its threshold and the explanation methods."""
        return {"model": model_name, "classes": classifier.classes, "threshold": classifier.threshold,
                "methods": list(METHODS), "max_upload": max_upload}

    @app.post("/api/predict")
    def predict(file: Annotated[UploadFile, File()]) -> dict[str, object]:
        """Calibrated probability of the positive class and the decision at the model's threshold."""
        with uploaded(file) as xray:
            probabilities = classifier.predict_arrays([xray.pixels])[0]
        decision = classifier.classes[int(classifier.decide(probabilities[None])[0])]
        if len(classifier.classes) == 2:
            probability = float(probabilities[1])
            return {"probability": probability, "prediction": decision, "threshold": classifier.threshold,
                    "model": model_name}
        best = int(probabilities.argmax())  # a multi-class model: the probability of the class it calls
        return {"probability": float(probabilities[best]), "prediction": decision, "threshold": None,
                "model": model_name, "probabilities": dict(zip(classifier.classes, map(float, probabilities)))}

    @app.post("/api/explain", responses={200: {"content": {"image/png": {}}}})
    def explain(
        file: Annotated[UploadFile, File()],
        method: Annotated[str, Form()] = "gradcam",
        view: Annotated[str, Form()] = "overlay",
        alpha: Annotated[float, Form()] = 0.5,
    ) -> Response:
        """The map of ``method`` at the X-ray's own resolution: blended on it (``overlay``) or as a transparent
        PNG to lay over the image (``heatmap``)."""
        if method not in METHODS:
            raise HTTPException(400, f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if view not in ("overlay", "heatmap") or not 0 <= alpha <= 1:
            raise HTTPException(400, "view must be overlay or heatmap and alpha within [0, 1]")
        with uploaded(file) as xray, explain_lock:
            try:
                heat = map_on_image(classifier, xray.pixels, method)
            except ConfigError as error:
                raise HTTPException(400, str(error)) from None
        if view == "heatmap":  # opaque colours where the map is strong: the page sets the opacity with its slider
            return _png(heatmap_rgba(heat, alpha=1.0))
        return _png(overlay(xray.pixels, heat, alpha=alpha))

    @app.post("/api/image", responses={200: {"content": {"image/png": {}}}})
    def image(file: Annotated[UploadFile, File()]) -> Response:
        """The X-ray as lungscope reads it (DICOM windowed, MONOCHROME1 inverted), as an 8-bit PNG."""
        with uploaded(file) as xray:
            return _png(np.rint(xray.pixels * 255).astype(np.uint8))

    return app


def run_server(classifier: Classifier, *, host: str = "127.0.0.1", port: int = 8000, model_name: str = "model",
               max_upload: int = DEFAULT_MAX_UPLOAD) -> None:
    """Serve until interrupted (uvicorn). Binds to the loopback address unless told otherwise."""
    import uvicorn

    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    uvicorn.run(create_app(classifier, model_name=model_name, max_upload=max_upload), host=host, port=port)
