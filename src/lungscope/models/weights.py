"""Pretrained weights: read a local state dict, fetch torchvision's ImageNet weights, take lungscope's own chest
X-ray model (``lungscope-cxr``), and fit any of them to a model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torchvision.models import get_model, get_model_weights

from lungscope.bundled import CXR_BACKBONE
from lungscope.checkpoint import load_checkpoint
from lungscope.errors import ConfigError
from lungscope.models.layers import first_conv_layer, named_classifier_head

_SHOWN = 3  # keys named per kind of problem in an error message

LUNGSCOPE_CXR = "lungscope-cxr"  # the ``pretrained`` name of lungscope's own chest X-ray model, the one below
LUNGSCOPE_CXR_CHECKPOINT = CXR_BACKBONE


def _one_line(exc: BaseException) -> str:
    """First line of an exception's message (torch's messages run over many lines), or its type name."""
    reason = getattr(exc, "reason", exc)  # URLError keeps the cause in .reason
    lines = str(reason).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``torch.save``-d state dict, or of the ``"model"`` entry of a lungscope checkpoint dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such weights file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    # torch.load raises whatever its unpickler meets (EOFError, KeyError, UnpicklingError, RuntimeError...).
    except Exception as exc:
        raise ConfigError(f"{path}: not a PyTorch weights file ({_one_line(exc)})") from exc
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not (
        isinstance(data, Mapping)
        and data
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())
    ):
        raise ConfigError(f"{path}: not a state dict (a mapping of names to tensors, or a dict with key 'model')")
    return dict(data)


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for ``arch`` (3 channels, 1000 classes), from the hub cache if there.

    torchvision downloads through ``torch.hub.load_state_dict_from_url`` into ``$TORCH_HOME/hub/checkpoints``
    and reads that file, offline, when it is already there. The network is built by torchvision so that its own
    fix-ups of old checkpoints apply (DenseNet's renamed keys).
    """
    weights = get_model_weights(arch).DEFAULT
    try:
        return get_model(arch, weights=weights, progress=True).state_dict()
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash or a corrupt file a RuntimeError
        file_name = Path(urlparse(weights.url).path).name
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise ConfigError(
            f"could not download ImageNet weights for {arch} ({_one_line(exc)}); "
            f"put {file_name} in {cache} or pass pretrained=PATH to a local state dict"
        ) from exc


@dataclass(frozen=True)
class ChestXrayWeights:
    """A lungscope classifier checkpoint as a starting point: its weights, and what it was trained as and on."""

    state: dict[str, torch.Tensor]
    model: str  # registry name
    classes: tuple[str, ...]
    image_size: int
    normalise: str
    source: str  # how error messages name it


def lungscope_cxr(model_name: str | None = None) -> ChestXrayWeights:
    """lungscope's own chest X-ray classifier (``LUNGSCOPE_CXR_CHECKPOINT``, pneumonia in children) as pretrained
    weights for ``model_name``: a one-line :class:`ConfigError` if it is another architecture."""
    checkpoint = load_checkpoint(LUNGSCOPE_CXR_CHECKPOINT, kind="classifier")
    config = checkpoint["config"]
    options = ", ".join(f"{k} {v}" for k, v in config.get("model_options", {}).items())
    weights = ChestXrayWeights(
        state=checkpoint["model"], model=config["model"], classes=tuple(checkpoint["classes"]),
        image_size=int(checkpoint["image_size"]), normalise=config.get("normalise", "fixed"),  # older: fixed
        source=f"{LUNGSCOPE_CXR} (a {config['model']}{f' with {options}' if options else ''}: "
               f"{LUNGSCOPE_CXR_CHECKPOINT})",
    )
    if model_name is not None and model_name != weights.model:
        raise ConfigError(f"pretrained {LUNGSCOPE_CXR} is a {weights.model} network; it cannot start a {model_name} "
                          f"(use model: {weights.model}, or another pretrained)")
    return weights


def check_pretrained_input(
    pretrained: str | os.PathLike[str] | None, *, model_name: str, image_size: int, normalise: str
) -> None:
    """One-line :class:`ConfigError` if a run of ``model_name`` cannot start from ``pretrained`` as configured:
    ``lungscope-cxr`` is one architecture and records its input side and normalisation; a config must use the same
    normalisation and at least that side (the error says what to set; nothing is adopted silently). A larger side is
    fine-tuning at a higher resolution: the convolutions and the average pool take any side, and the objects the
    network learnt to see appear larger, which fine-tuning adapts to (Touvron et al. 2019, "FixRes"); a smaller one
    would lose the detail the weights were learnt on. Other weights record neither and pass."""
    if pretrained != LUNGSCOPE_CXR:
        return
    weights = lungscope_cxr(model_name)
    problems = []
    if image_size < weights.image_size:
        problems.append((f"image_size {image_size}", f"image_size: {weights.image_size} (or larger)"))
    if normalise != weights.normalise:
        problems.append((f"normalise {normalise}", f"normalise: {weights.normalise}"))
    if problems:
        raise ConfigError(
            f"pretrained {LUNGSCOPE_CXR} learnt on {weights.image_size}x{weights.image_size} images normalised "
            f"{weights.normalise}; this run has {', '.join(given for given, _ in problems)}: set "
            f"{', '.join(wanted for _, wanted in problems)}"
        )


def load_encoder(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str, model_name: str
) -> None:
    """Load a classifier's ``features.*`` weights into ``model.features`` (an encoder-transfer network, e.g. the
    ``cxr-unet`` segmenter on ``cxr-resnet``'s encoder), every encoder key required; the rest of ``model`` keeps its
    initialisation. A missing, unexpected or differently shaped key raises :class:`ConfigError` naming a few."""
    prefix = "features."
    part = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    encoder = model.get_submodule("features")
    target = encoder.state_dict()
    missing = [key for key in target if key not in part and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in part if key not in target]
    mismatched = [f"{key} {tuple(value.shape)} != {tuple(target[key].shape)}" for key, value in part.items()
                  if key in target and value.shape != target[key].shape]
    _refuse_unfitting(f"{source} does not fit {model_name}'s encoder", missing, unexpected, mismatched)
    encoder.load_state_dict({**target, **part})


def _refuse_unfitting(what: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
    """One-line :class:`ConfigError` naming a few keys of each kind of problem, if there is any."""
    problems = [
        _listed(label, keys)
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
        if keys
    ]
    if problems:
        raise ConfigError(f"{what}: {'; '.join(problems)}")


def _listed(label: str, items: list[str]) -> str:
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"{label} {', '.join(items[:_SHOWN])}{more}"


def load_weights(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str, model_name: str,
    fresh_head: bool = False,
) -> None:
    """Load ``state`` into ``model``, adapting the two layers transfer learning changes.

    - first convolution: 3-channel weights feed a 1-channel model by summing the kernels over the input channels
      (a grey image replicated to RGB gives the same response);
    - classifier head: weights whose shape differs (another number of classes), or all of them with ``fresh_head``
      (other classes), are dropped and the model's new head is kept; a state dict without a head (a backbone only)
      is fine too.
    Any other missing, unexpected or differently shaped key raises :class:`ConfigError` naming a few.
    """
    target = model.state_dict()
    conv_key = f"{first_conv_layer(model)[0]}.weight"
    head_name = named_classifier_head(model)[0]
    head_keys = {f"{head_name}.weight", f"{head_name}.bias"}
    fitted = dict(target)
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in state.items():
        if fresh_head and key in head_keys:
            continue
        if key not in target:
            unexpected.append(key)
            continue
        want = target[key].shape
        if value.shape == want:
            fitted[key] = value
        elif key == conv_key and value.dim() == 4 and value.shape[1] == 3 and want == value[:, :1].shape:
            fitted[key] = value.sum(dim=1, keepdim=True)
        elif key not in head_keys:
            mismatched.append(f"{key} {tuple(value.shape)} != {tuple(want)}")
    # Checkpoints older than BatchNorm's batch counter lack num_batches_tracked; the model's value is kept.
    missing = [k for k in target if k not in state and k not in head_keys and not k.endswith("num_batches_tracked")]
    _refuse_unfitting(f"{source} does not fit {model_name}", missing, unexpected, mismatched)
    model.load_state_dict(fitted)
