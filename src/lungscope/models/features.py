"""Features at a layer of a network: the one way ``lungscope features`` and the two-stage model read a layer.

By default the input of the final Linear (the penultimate features; the Linear becomes the identity), otherwise the
output of a module named as in ``named_modules``, globally average-pooled when it is a feature map. The layers after
it do not run and are dropped from the network, so its state holds only the weights the features depend on: the
network is cut by torch.fx (an exportable graph) where it can be traced, else by a hook that stops the forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx.proxy import TraceError
from torchvision.models.feature_extraction import create_feature_extractor

from lungscope.errors import ConfigError
from lungscope.models.layers import named_classifier_head

PENULTIMATE = "input"  # the suffix recorded for the default layer: "<final Linear's name>:input"


def recorded_layer(model: nn.Module, layer: str | None) -> str:
    """How a features file names ``layer`` of ``model``: ``"<final Linear's name>:input"`` for the default."""
    return f"{named_classifier_head(model)[0]}:{PENULTIMATE}" if layer is None else layer


def pooled(value: Any) -> torch.Tensor:
    """``(N, D)`` of a layer's output: 4-D maps globally average-pooled, anything else flattened."""
    tensor = value[0] if isinstance(value, tuple) else value
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(f"the layer gives a {type(tensor).__name__}, not a tensor: pick another layer")
    return tensor.mean(dim=(2, 3)) if tensor.ndim == 4 else tensor.flatten(1)


class _Reached(Exception):  # noqa: N818 - not an error: it stops a forward pass at the layer read
    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output


def _modules_before(body: nn.Module, layer: str, example: torch.Tensor) -> tuple[set[str], int]:
    """The modules of ``body`` that start before its module ``layer`` ends, in one forward pass of ``example``, and
    the length of the layer's :func:`pooled` output; a layer that does not run exactly once is refused."""
    started: list[str] = []
    reached: list[tuple[int, int]] = []  # (len(started), feature length) each time the layer finishes

    def finished(_module: nn.Module, _inputs: Any, output: Any) -> None:
        reached.append((len(started), pooled(output).shape[1]))

    handles = [module.register_forward_pre_hook(lambda *_, name=name: started.append(name))
               for name, module in body.named_modules() if name]
    handles.append(body.get_submodule(layer).register_forward_hook(finished))
    try:
        with torch.no_grad():
            body(example)
    finally:
        for handle in handles:
            handle.remove()
    if len(reached) != 1:
        raise ConfigError(f"layer {layer!r} runs {len(reached)} times per forward pass: pick another layer")
    return set(started[: reached[0][0]]), reached[0][1]


class LayerOutput(nn.Module):
    """:func:`pooled` output (``dim`` long) of the module ``layer`` of ``body``; the modules that would run after it
    are gone (a torch.fx graph of the modules before it, or ``body`` with the later modules replaced by the
    identity)."""

    def __init__(self, body: nn.Module, layer: str, example: torch.Tensor) -> None:
        super().__init__()
        names = [name for name, _ in body.named_modules() if name]
        if layer not in names:
            raise ConfigError(f"{type(body).__name__} has no layer {layer!r}; its layers are: {', '.join(names)}")
        self.layer = layer
        before, self.dim = _modules_before(body, layer, example)
        training = body.training
        try:
            self.body: nn.Module = create_feature_extractor(body, return_nodes={layer: "features"})
            self._traced = True
        except (TraceError, ValueError):  # control flow on tensors; a layer FX does not keep as a node
            self.body, self._traced = body.train(training), False  # a failed trace may leave it in train mode
            self._drop_after(before)

    def _drop_after(self, before: set[str]) -> None:
        """Replace every module not in ``before`` (that runs after the layer, or never) by the identity."""
        dropped: list[str] = []
        for name, _ in list(self.body.named_modules()):
            if name and name not in before and not any(name.startswith(f"{d}.") for d in dropped):
                dropped.append(name)
                self.body.set_submodule(name, nn.Identity())
        target = getattr(self.body, "gradcam_layer", None)  # see models.layers.gradcam_layer
        if isinstance(target, str) and any(target == d or target.startswith(f"{d}.") for d in dropped):
            object.__setattr__(self.body, "gradcam_layer", None)  # its maps are cut off: Grad-CAM takes the last conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._traced:
            return pooled(self.body(x)["features"])

        def stop(_module: nn.Module, _inputs: Any, output: Any) -> None:
            raise _Reached(output)

        handle = self.body.get_submodule(self.layer).register_forward_hook(stop)
        try:
            self.body(x)
        except _Reached as reached:
            return pooled(reached.output)
        finally:
            handle.remove()
        raise AssertionError(f"layer {self.layer!r} did not run")  # _drop_after saw it run


def features_at(model: nn.Module, layer: str | None, example: torch.Tensor) -> tuple[nn.Module, int]:
    """``model`` cut to give ``(N, D)`` features at ``layer`` (None: the input of its final Linear, which becomes
    the identity in place), and D; ``example`` is an input batch, of shapes only (e.g. on the meta device)."""
    if layer is None:
        head_name, head = named_classifier_head(model)
        model.set_submodule(head_name, nn.Identity())
        return model, head.in_features
    cut = LayerOutput(model, layer, example)
    return cut, cut.dim
