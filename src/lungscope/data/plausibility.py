"""Is a decoded image plausibly a chest X-ray at all? A model answers any array; this refuses the absurd ones.

The thresholds were measured with ``read_image`` on the real data: all 5,216 images of ``chest_xray/train``
and all 563 of ``lung_masks/images`` pass. Their smallest side is 224 / 256 pixels, their largest aspect ratio 1.0,
their smallest pixel standard deviation 0.078 (person1413_bacteria_3615) / 0.164 (CHNCXR_0598_1) and their
largest share of one grey level (of 256) 0.29 / 0.59 (MCUCXR_0060_0, a wide black border), their fewest grey levels
in use (of 256) 113 (person1413_bacteria_3615). A 1x1, 2x2, 1x100000, blank or nearly blank image fails, and so does
one drawn in a handful of greys (a black-and-white or dithered picture, a 1-bit DICOM, a bit mask): a radiograph's
grey scale is continuous. An image reduced to the working size (over 2048 pixels on a side) gains intermediate
greys in the reduction, so a large black-and-white picture passes this check.

A DICOM file also says what it is: :func:`header_problem` refuses one whose header names another modality (a CT,
an MR, a mammogram), a lateral or oblique view, or a body part that is not the chest. The header is only trusted to
refuse: a file that leaves a field out, or fills it with a term not listed here, is judged by its pixels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lungscope.errors import ImageReadError

MIN_SIDE = 64  # pixels, each side of the file's image
MAX_ASPECT = 3.0  # longest side over shortest
MIN_STD = 0.01  # standard deviation of the [0, 1] pixels
MAX_ONE_LEVEL = 0.99  # share of the pixels at the most common of 256 grey levels
MIN_LEVELS = 8  # grey levels (of 256) in use; the real images use at least 113


# DICOM Modality (0008,0060) defined terms of images that are not projection radiographs (PS3.3 C.7.3.1.1.1)
OTHER_MODALITIES: dict[str, str] = {
    "CT": "computed tomography", "MR": "magnetic resonance", "US": "ultrasound", "NM": "nuclear medicine",
    "PT": "positron emission tomography", "MG": "mammography", "XA": "X-ray angiography", "RF": "fluoroscopy",
    "IO": "intra-oral radiography", "PX": "panoramic dental radiography", "OP": "ophthalmic photography",
    "OPT": "ophthalmic tomography", "XC": "photography", "ES": "endoscopy", "SM": "slide microscopy",
    "GM": "microscopy", "IVOCT": "intravascular optical coherence tomography", "IVUS": "intravascular ultrasound",
}
# ViewPosition (0018,5101) words of views the models never saw (they read frontal PA and AP views): "LL", "RL",
# "LATERAL", "XTABLE LATERAL" are lateral; the four obliques are oblique. Decubitus views ("AP LLD") are frontal.
OTHER_VIEWS: dict[str, str] = {"LL": "a lateral", "RL": "a lateral", "LAT": "a lateral", "LATERAL": "a lateral",
                               "LAO": "an oblique", "RAO": "an oblique", "LPO": "an oblique", "RPO": "an oblique"}
# BodyPartExamined (0018,0015) defined terms (PS3.16 Annex L) of parts that are not the chest
OTHER_BODY_PARTS = frozenset({
    "ABDOMEN", "ANKLE", "ARM", "BRAIN", "BREAST", "CSPINE", "ELBOW", "EXTREMITY", "FEMUR", "FIBULA", "FINGER", "FOOT",
    "FOREARM", "HAND", "HEAD", "HEEL", "HIP", "HUMERUS", "JAW", "KNEE", "LEG", "LSPINE", "MANDIBLE", "NECK", "PELVIS",
    "SACRUM", "SHOULDER", "SINUS", "SKULL", "SSPINE", "TIBIA", "TMJ", "TOE", "TSPINE", "WRIST",
})
_FRONTAL = {"PA", "AP"}


class ImplausibleImageError(ImageReadError):
    """The file was decoded, but is not a usable chest X-ray; the reason starts ``not a usable chest X-ray:``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, f"not a usable chest X-ray: {reason}")


def implausibility(pixels: np.ndarray, width: int, height: int) -> str | None:
    """Why an image (``pixels`` 2-D in [0, 1]; ``width`` x ``height`` its size in the file) cannot be a chest
    X-ray, or None."""
    if min(width, height) < MIN_SIDE:
        return f"{width}x{height} pixels, under {MIN_SIDE} on a side"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"{width}x{height} pixels, an aspect ratio beyond 1:{MAX_ASPECT:g}"
    if (std := float(pixels.std())) < MIN_STD:
        return f"blank: the pixel standard deviation is {std:.4f}, under {MIN_STD}"
    levels = np.bincount(np.rint(pixels * 255).astype(np.uint8).ravel(), minlength=256)
    if (share := levels.max() / pixels.size) >= MAX_ONE_LEVEL:
        return f"nearly blank: {share:.1%} of the pixels have one grey value"
    if (used := int(np.count_nonzero(levels))) < MIN_LEVELS:
        return f"{used} grey levels, under {MIN_LEVELS}: a drawing or a bit mask, not a radiograph's grey scale"
    return None


def header_problem(meta: Mapping[str, object]) -> str | None:
    """Why a DICOM file's header (``XRay.meta``: Modality, ViewPosition, BodyPartExamined) says it is not a frontal
    chest radiograph, or None (always None for other formats, which carry no such fields)."""
    modality = str(meta.get("Modality", "")).strip().upper()
    view = str(meta.get("ViewPosition", "")).strip().upper().replace("_", " ").split()
    part = str(meta.get("BodyPartExamined", "")).strip().upper()
    reads = "lungscope reads frontal (PA or AP) chest radiographs"
    if modality in OTHER_MODALITIES:
        return f"the DICOM header says Modality {modality} ({OTHER_MODALITIES[modality]}); {reads}"
    if not _FRONTAL.intersection(view) and (kinds := [OTHER_VIEWS[w] for w in view if w in OTHER_VIEWS]):
        return f"the DICOM header says ViewPosition {' '.join(view)} ({kinds[0]} view); {reads}"
    if part in OTHER_BODY_PARTS:
        return f"the DICOM header says BodyPartExamined {part}; {reads}"
    return None


def check_plausible(path: str, pixels: np.ndarray, width: int, height: int) -> None:
    """Raise :class:`ImplausibleImageError` when :func:`implausibility` finds a reason."""
    if (reason := implausibility(pixels, width, height)) is not None:
        raise ImplausibleImageError(path, reason)


def check_header(path: str, meta: Mapping[str, object]) -> None:
    """Raise :class:`ImplausibleImageError` when :func:`header_problem` finds a reason."""
    if (reason := header_problem(meta)) is not None:
        raise ImplausibleImageError(path, reason)
