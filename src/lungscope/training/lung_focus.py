"""Lung-aware training: penalise explanation mass outside the lung fields ("right for the right reasons",
Ross et al. 2017), here on Grad-CAM at the layer ``explain`` uses by default, so the penalty acts on the map a
clinician is shown.

The Grad-CAM of each class is computed as :mod:`lungscope.explain` computes it (the spatial mean of the class logit's
gradient weights the layer's maps), but with ``create_graph=True``, so the fraction of its absolute mass outside the
lung mask can be minimised with the loss. Absolute, not positive: a share of the positive part alone is minimised
by a map with no positive values at all (measured: a run so trained drove it to 1e-6 and explained every X-ray
with an all-negative map), while the share of |map| can only fall by moving the evidence into the lungs. On
``cxr-resnet`` the gradient runs through the linear head only, so the penalty costs little beside the forward and
backward passes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lungscope.models import gradcam_layer
from lungscope.progress import progress_bar
from lungscope.segmentation.segmenter import cached_segmenter


def grad_cam(scores: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Grad-CAM ``(N, h, w)`` of per-image ``scores`` (N,) at ``maps`` (N, C, h, w), signed (before the ReLU) and
    differentiable: the channels weighted by the spatial mean of their gradient (Selvaraju et al. 2017)."""
    (gradient,) = torch.autograd.grad(scores.sum(), maps, create_graph=True)
    return (gradient.mean(dim=(2, 3), keepdim=True) * maps).sum(dim=1)


class GradCamOutsideLungs:
    """A forward hook on ``model``'s Grad-CAM layer keeps its output; calling the object with the batch's logits
    and lung masks ``(N, 1, H, W)`` in [0, 1] returns the mean over images and classes of the fraction of Grad-CAM's
    absolute mass outside the lungs (the mask averaged onto the layer's grid), a differentiable scalar."""

    def __init__(self, model: nn.Module) -> None:
        self.layer_name, layer = gradcam_layer(model)
        self.maps: torch.Tensor | None = None
        self._handle = layer.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            self.maps = None
        elif output.requires_grad:
            self.maps = output
        else:  # every layer up to here frozen (two-stage fine-tuning's first stage): the maps become a leaf, so
            # Grad-CAM can be taken at them and the penalty trains what follows them (the head's class weights)
            self.maps = output.detach().requires_grad_()
        return self.maps if self.maps is not None else output

    def __call__(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if self.maps is None:
            raise RuntimeError("no feature maps recorded: call the model with gradients enabled first")
        maps = self.maps
        # torch's stub omits the torch.Size it accepts as output size
        lungs = F.adaptive_avg_pool2d(masks.to(maps.dtype), maps.shape[-2:]).squeeze(1)  # type: ignore[arg-type]
        fractions = []
        for index in range(logits.shape[1]):
            cam = grad_cam(logits[:, index], maps).abs()
            fractions.append((cam * (1 - lungs)).sum(dim=(1, 2)) / (cam.sum(dim=(1, 2)) + 1e-6))
        self.maps = None
        return torch.stack(fractions).mean()

    def remove(self) -> None:
        """Detach the hook from the model."""
        self._handle.remove()


def lung_masks(images: torch.Tensor, *, batch_size: int = 64, show: bool | None = None,
               desc: str = "segment") -> torch.Tensor:
    """The bundled segmenter's lung masks ``(N, 1, S, S)`` (uint8, 0/1) of preloaded images ``(N, 1, S, S)``."""
    segmenter = cached_segmenter()
    masks: list[torch.Tensor] = []
    for start in progress_bar(range(0, len(images), batch_size), desc=desc, unit="batch", show=show):
        chunk = [image[0].float().numpy() for image in images[start:start + batch_size]]
        masks.extend(torch.from_numpy(mask) for mask in segmenter.masks(chunk))
    return torch.stack(masks).unsqueeze(1).to(torch.uint8)
