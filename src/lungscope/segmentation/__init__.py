"""Lung fields: the segmenter, mask clean-up and scores, mask files, and the ``roi: lungs`` crop (importing this
package registers it with :mod:`lungscope.data.transforms`). The lung U-Net trains in
:mod:`lungscope.training.segmenter`."""

from lungscope.segmentation.masks import clean_mask, dice, iou, lung_box
from lungscope.segmentation.roi import LungCrop
from lungscope.segmentation.segmenter import DEFAULT_SEGMENTER, LungSegmenter

__all__ = ["DEFAULT_SEGMENTER", "LungCrop", "LungSegmenter", "clean_mask", "dice", "iou", "lung_box"]
