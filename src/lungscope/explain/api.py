"""``explain``: one call for every method."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lungscope.errors import ConfigError
from lungscope.explain.base import (
    DEFAULT_METHOD,
    Explanation,
    explaining,
    make_explainer,
    probabilities,
    resolve_targets,
)
from lungscope.explain.sanity import warn_if_untrusted

Target = int | list[int] | np.ndarray | torch.Tensor | None


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str = DEFAULT_METHOD,
    target: Target = None,
    layer: str | None = None,
    *,
    warn: bool = True,
    **options: Any,
) -> Explanation:
    """Explain a batch of model inputs ``(N, C, H, W)`` (preprocessed and normalised as in training).

    ``method``: one of :data:`~lungscope.explain.base.METHODS`. ``target``: None (the predicted class; for a
    single-logit head the logit itself), one class index, or one per image. ``layer``: for Grad-CAM and Guided
    Grad-CAM, the layer's name in ``model.named_modules()`` (default:
    the model's Grad-CAM layer, else its last convolution). ``options`` go to the
    method (``steps`` for integrated-gradients; ``window``, ``stride`` for occlusion). Runs on the model's device;
    the model is put in eval mode for the call and left as it was. ``warn``: a :class:`SanityWarning` for methods
    known to fail the model-randomisation test.
    """
    if images.ndim != 4:
        raise ConfigError(f"images must be a batch (N, C, H, W), got shape {tuple(images.shape)}")
    explainer = make_explainer(model, method, layer, **options)
    if warn:
        warn_if_untrusted(method)
    device = next(model.parameters()).device
    inputs = images.to(device, torch.float32).detach().requires_grad_()  # a new tensor: the caller's is untouched
    with explaining(model):
        with torch.no_grad():
            logits = model(inputs)
        targets = resolve_targets(target, logits)
        maps = explainer.attribute(inputs, targets)
    scores = probabilities(logits.float()).gather(1, targets[:, None])[:, 0]
    return Explanation(
        maps=maps.detach().float().cpu().numpy(),
        method=method,
        layer=explainer.layer_name,
        targets=targets.cpu().numpy(),
        scores=scores.cpu().numpy(),
    )
