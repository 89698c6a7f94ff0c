"""FastAPI app: one page to drop X-rays on, and the API behind it.

``POST /api/predict`` (multipart ``file``) -> ``{"probability", "prediction", "threshold", "model"}``;
``POST /api/explain`` (``file``, form ``method``, ``view`` overlay|heatmap, ``alpha``) -> PNG;
``POST /api/image`` (``file``) -> the X-ray as a grayscale PNG (browsers cannot show DICOM).
Uploads live in a temporary folder for the length of one request; nothing is kept after the answer.
"""

from __future__ import annotations

import copy
import ctypes
import io
import shutil
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lungscope.data.io import IMAGE_SUFFIXES, XRay, read_image
from lungscope.errors import ConfigError, ImageReadError
from lungscope.explain.api import explain as explain_batch
from lungscope.explain.base import DEFAULT_METHOD, METHODS
from lungscope.explain.views import heatmap_rgba, map_to_image, overlay, signed_view
from lungscope.inference import Classifier
from lungscope.orientation import read_upright

DEFAULT_MAX_UPLOAD = 50 * 1024 * 1024
# Reading one upload can hold half a gigabyte (a 100-million-pixel RGB PNG, the most read_image decodes: 525 MB peak,
# measured), so the server reads two at a time whatever the number of requests; decoding is CPU-bound and the model
# already uses every core, so more at once would add memory, not throughput.
DECODE_SLOTS = 2
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
_CHUNK = 1 << 20
_DISPLAY_NAME = 120  # characters of the client's file name kept for messages


class ErrorBody(BaseModel):
    """What every refused request answers."""

    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A bad request: an unreadable image or a bad parameter"},
    413: {"model": ErrorBody, "description": "The request body is larger than the server's upload limit"},
    415: {"model": ErrorBody, "description": "The upload is not an image of a supported format"},
    422: {"model": ErrorBody, "description": "A form field is missing or malformed (the file above all)"},
}


def default_allowed_hosts(host: str) -> list[str]:
    """The Host names a server bound to ``host`` answers by default: that address and this machine's names."""
    return list(dict.fromkeys([host, "localhost", "127.0.0.1"]))


def display_name(filename: str | None) -> str:
    """The client's file name fit for a message: its last path part, without control characters, shortened.
    Never a path: uploads are stored under a fixed name."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    return (name[: _DISPLAY_NAME - 1] + "…" if len(name) > _DISPLAY_NAME else name) or "upload"


def _stored_name(filename: str | None) -> str:
    """The temporary file's name: ``upload`` with the client's suffix only where it is a known image suffix."""
    suffix = Path(display_name(filename)).suffix.lower()
    return "upload" + (suffix if suffix in IMAGE_SUFFIXES else "")


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
    return map_to_image(signed_view(explanation.maps[0]), pixels.shape, classifier.preprocessing.resize,
                        classifier.crop_box(pixels))


def _with_own_model(classifier: Classifier) -> Classifier:
    """``classifier`` with a private copy of its model: attribution hooks on the copy never see another request's
    forward pass (a prediction running through hooked layers breaks Captum's graph), and predictions never wait."""
    twin = copy.copy(classifier)
    twin.model = copy.deepcopy(classifier.model)
    return twin


class BodyLimit:
    """413 as soon as a request body passes ``limit`` bytes, counted as they arrive: a chunked upload declares no
    Content-Length, and nothing past the limit is read, so nothing past it is spooled anywhere.

    Hand-written: Starlette's RequestBodyLimitMiddleware (FastAPI's ``max_body_size``) turns every answer to a
    request that declares too large a body into plain text, not the JSON ``{"detail"}`` of this API's other errors.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.detail = f"upload larger than {limit / (1024 * 1024):g} MB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:  # refused before a byte of the body is read
            return await JSONResponse({"detail": self.detail}, 413, {"Connection": "close"})(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # FastAPI re-raises it from the form parsing; its handler answers the JSON
                raise HTTPException(413, self.detail, headers={"Connection": "close"})
            return message

        await self.app(scope, counted, send)


def create_app(
    classifier: Classifier,
    *,
    model_name: str = "model",
    max_upload: int = DEFAULT_MAX_UPLOAD,
    allowed_hosts: Sequence[str] = ("*",),
) -> FastAPI:
    """The app serving ``classifier``. A request body over ``max_upload`` bytes gets 413 as soon as the bytes
    received pass it (chunked uploads included); a Host header outside ``allowed_hosts`` gets 400."""
    app = FastAPI(title="lungscope", description="Chest X-ray screening with the map of where the model looked.")
    app.add_middleware(BodyLimit, limit=max_upload)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError) -> JSONResponse:
        """One line naming the field, as every other refusal; FastAPI's default lists each error with the input it
        refused, which for a file part sent without a file name is the upload itself, echoed back."""
        first = error.errors()[0]
        field = str(first["loc"][-1]) if first.get("loc") else "form"
        if field == "file":
            reason = "expected an image file (a multipart form field named 'file', with a file name)"
        else:
            reason = str(first.get("msg", "invalid"))
        return JSONResponse({"detail": f"{field}: {reason}"}, 422)

    explainer = _with_own_model(classifier)
    explain_lock = threading.Lock()  # attribution hooks live on the explainer's model: one explanation at a time
    decoding = threading.BoundedSemaphore(DECODE_SLOTS)

    @contextmanager
    def uploaded(upload: UploadFile, reader: Callable[[Path], XRay] = read_upright) -> Iterator[XRay]:
        """The upload read as an X-ray (by default refused when not upright); the file exists only inside this
        block, under a name of ours."""
        with tempfile.TemporaryDirectory(prefix="lungscope-upload-") as folder:
            path = Path(folder) / _stored_name(upload.filename)
            with path.open("wb") as handle:
                shutil.copyfileobj(upload.file, handle, _CHUNK)
            try:
                with decoding:
                    xray = reader(path)
                yield xray
            except ImageReadError as error:
                status = 415 if error.reason.startswith(("not an image", "unsupported")) else 400
                raise HTTPException(status, f"{display_name(upload.filename)}: {error.reason}") from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return files("lungscope.serve").joinpath("page.html").read_text()

    @app.get("/api/info")
    def info() -> dict[str, object]:
        """The model, its classes, its threshold and the explanation methods."""
        return {"model": model_name, "classes": classifier.classes, "threshold": classifier.threshold,
                "methods": list(METHODS), "max_upload": max_upload}

    @app.post("/api/predict", responses=ERRORS)
    def predict(file: Annotated[UploadFile, File()]) -> dict[str, object]:
        """Calibrated probability of the positive class and the decision at the model's threshold."""
        with uploaded(file) as xray:
            scores, spread = classifier.scores(classifier.transform(xray.pixels)[None])
        probabilities = scores[0]
        called = int(classifier.decide(probabilities[None])[0])
        decision = classifier.classes[called]
        if len(classifier.classes) == 2:
            probability = float(probabilities[1])
            answer = {"probability": probability, "prediction": decision, "threshold": classifier.threshold,
                      "model": model_name}
            if spread is not None:  # test-time augmentation or an ensemble: the answer's uncertainty
                answer["uncertainty"] = float(spread[0])
            return answer
        # a multi-class model: the probability of the class it calls
        return {"probability": float(probabilities[called]), "prediction": decision, "threshold": None,
                "model": model_name, "probabilities": dict(zip(classifier.classes, map(float, probabilities)))}

    @app.post("/api/explain", responses={200: {"content": {"image/png": {}}}, **ERRORS})
    def explain(
        file: Annotated[UploadFile, File()],
        method: Annotated[str, Form()] = DEFAULT_METHOD,
        view: Annotated[str, Form()] = "overlay",
        alpha: Annotated[float, Form()] = 0.5,
    ) -> Response:
        """The map of ``method`` at the X-ray's own resolution: blended on it (``overlay``) or as a transparent
        PNG to lay over the image (``heatmap``)."""
        if method not in METHODS:
            raise HTTPException(400, f"unknown method {method[:_DISPLAY_NAME]!r}; choose one of {', '.join(METHODS)}")
        if view not in ("overlay", "heatmap") or not 0 <= alpha <= 1:
            raise HTTPException(400, "view must be overlay or heatmap and alpha within [0, 1]")
        with uploaded(file) as xray, explain_lock:
            try:
                heat = map_on_image(explainer, xray.pixels, method)
            except ConfigError as error:
                raise HTTPException(400, str(error)) from None
        if view == "heatmap":  # opaque colours where the map is strong: the page sets the opacity with its slider
            return _png(heatmap_rgba(heat, alpha=1.0))
        return _png(overlay(xray.pixels, heat, alpha=alpha))

    @app.post("/api/image", responses={200: {"content": {"image/png": {}}}, **ERRORS})
    def image(file: Annotated[UploadFile, File()]) -> Response:
        """The X-ray as lungscope reads it (DICOM windowed, MONOCHROME1 inverted), as an 8-bit PNG."""
        with uploaded(file, read_image) as xray:  # any readable X-ray as it is, turned or not (predict refuses those)
            return _png(np.rint(xray.pixels * 255).astype(np.uint8))

    return app


def return_freed_memory(threshold: int = 8 << 20) -> bool:
    """Have glibc's malloc give every freed block of ``threshold`` bytes or more back to the system at once
    (``mallopt(M_MMAP_THRESHOLD)``); True if set. By default a block under 32 MB freed by a request thread stays in
    that thread's malloc arena, so each thread that once read a large upload keeps what it used (Pillow decodes in
    16 MB blocks): reading 24 uploads of a 100-million-pixel PNG two at a time grew the server by 5.1 GB, and by
    1.0 GB with this (measured once; benchmarks/serve_load.py measures the server as shipped). A process-wide C
    setting that no Python library exposes, hence ctypes; False where the C library is not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def run_server(classifier: Classifier, *, host: str = "127.0.0.1", port: int = 8000, model_name: str = "model",
               max_upload: int = DEFAULT_MAX_UPLOAD, allowed_hosts: Sequence[str] | None = None) -> None:
    """Serve until interrupted (uvicorn). Binds to the loopback address unless told otherwise. ``allowed_hosts``:
    the Host names answered (default :func:`default_allowed_hosts`), so DNS-rebinding pages get 400."""
    import uvicorn

    return_freed_memory()
    app = create_app(classifier, model_name=model_name, max_upload=max_upload,
                     allowed_hosts=default_allowed_hosts(host) if allowed_hosts is None else allowed_hosts)
    uvicorn.run(app, host=host, port=port)
