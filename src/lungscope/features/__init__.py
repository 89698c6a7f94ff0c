"""Feature vectors of X-rays for downstream heads: penultimate-layer (or any layer's) features in one Parquet file.

>>> from lungscope.features import extract_features, read_features
>>> extract_features("default", "../shared/data/chest_xray/train", "features.parquet")            # or engine="spark"
>>> frame, metadata = read_features("features.parquet")  # path, label, patient_id, features, error; the run's facts

The file's contract (columns and the ``lungscope`` schema metadata) is in :mod:`lungscope.features.parquet`.
"""

from lungscope.features.api import FeaturesRun, extract_features, feature_inputs
from lungscope.features.extract import FeatureExtractor
from lungscope.features.parquet import (
    METADATA_KEY,
    SCHEMA,
    FeatureWriter,
    read_features,
    read_metadata,
)

__all__ = [
    "METADATA_KEY",
    "SCHEMA",
    "FeatureExtractor",
    "FeatureWriter",
    "FeaturesRun",
    "extract_features",
    "feature_inputs",
    "read_features",
    "read_metadata",
]
