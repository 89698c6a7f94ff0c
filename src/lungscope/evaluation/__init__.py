"""Evaluation: metrics with patient-level bootstrap confidence intervals."""

from lungscope.evaluation.bootstrap import patient_bootstrap

__all__ = ["patient_bootstrap"]
