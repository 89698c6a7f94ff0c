"""Explanations: where the model looked, and how far to trust the map.

>>> from lungscope.explain import explain, signed_view, overlay
>>> explanation = explain(model, batch, method="gradcam")  # maps (N, H, W), signed, at the input's resolution

Methods (:data:`METHODS`): gradcam, guided-backprop, guided-gradcam, deconvolution, integrated-gradients,
occlusion, each on Captum. Trust: :func:`explain_check` (deletion/insertion, cascading randomisation, lung share).
The commands on image files (``explain_files``, ``activation_files``, ``filter_files``, ``check_files``) are in
:mod:`lungscope.explain.files`: importing this package loads no run, segmenter or prediction code.
"""

from lungscope.explain.api import explain
from lungscope.explain.base import METHODS, Explainer, Explanation, get_method, resolve_layer
from lungscope.explain.layers import (
    activation_grid_figure,
    box_region,
    conv_kernels,
    filter_grid_figure,
    layer_activations,
    top_channels,
    top_channels_figure,
)
from lungscope.explain.sanity import FLAG_THRESHOLD, KNOWN_FLAGGED, SanityWarning, untrusted_reason
from lungscope.explain.trust import (
    cascading_randomization,
    deletion_insertion,
    explain_check,
    format_check,
    lung_share,
    rank_correlation,
    trust_figure,
)
from lungscope.explain.views import (
    SIGNS,
    explanation_figure,
    heatmap_rgba,
    map_to_image,
    overlay,
    signed_view,
)

__all__ = [
    "FLAG_THRESHOLD", "KNOWN_FLAGGED", "METHODS", "SIGNS", "Explainer", "Explanation", "SanityWarning",
    "activation_grid_figure", "box_region", "cascading_randomization", "conv_kernels", "deletion_insertion", "explain",
    "explain_check", "explanation_figure", "filter_grid_figure", "format_check", "get_method", "heatmap_rgba",
    "layer_activations", "lung_share", "map_to_image", "overlay", "rank_correlation", "resolve_layer", "signed_view",
    "top_channels", "top_channels_figure", "trust_figure", "untrusted_reason",
]
