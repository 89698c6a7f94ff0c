"""Lung fields: the lung U-Net's training, the segmenter, mask clean-up and scores, and the ``roi: lungs`` crop."""

from lungscope.segmentation.masks import clean_mask, dice, iou, lung_box
from lungscope.segmentation.roi import ROI_CHOICES, LungCrop
from lungscope.segmentation.segmenter import DEFAULT_SEGMENTER, LungSegmenter

__all__ = ["DEFAULT_SEGMENTER", "ROI_CHOICES", "LungCrop", "LungSegmenter", "clean_mask", "dice", "iou", "lung_box"]
