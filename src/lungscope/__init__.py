"""lungscope: explainable chest X-ray screening."""

__version__ = "0.1.0"
