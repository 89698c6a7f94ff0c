"""``extract_features``: a data set's feature vectors into one Parquet file, on this machine or on Spark."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lungscope.data.datasets import scan_dataset
from lungscope.data.labels import classes_for
from lungscope.errors import ConfigError
from lungscope.features.extract import FeatureExtractor, local_rows, model_source
from lungscope.features.parquet import FeatureWriter, writable_output
from lungscope.inference import Classifier, fingerprint

ENGINES = ("local", "spark")


@dataclass
class FeaturesRun:
    """What an extraction wrote: the file, its rows, the rows with an error, and the file's metadata."""

    path: Path
    n_rows: int
    n_failed: int
    metadata: dict[str, Any]


def feature_inputs(data: str | os.PathLike[str], labels: str) -> pd.DataFrame:
    """The images of a folder or CSV manifest (as :func:`~lungscope.data.datasets.scan_dataset` reads them) as
    ``path, label, patient_id, error`` rows: files it had to leave out (no label, missing, a symlink out of the
    folder) come first, with their reason in ``error`` and no label."""
    frame, skipped = scan_dataset(data, labels, strict=False, with_skipped=True)
    left_out = pd.DataFrame(skipped, columns=["path", "error"]).assign(label=None, patient_id=None)
    images = frame[["path", "label", "patient_id"]].assign(error=None)
    columns = ["path", "label", "patient_id", "error"]
    return pd.concat([left_out[columns], images[columns]], ignore_index=True).astype(object)


def features_metadata(source: str | os.PathLike[str], extractor: FeatureExtractor, labels: str) -> dict[str, Any]:
    """The ``lungscope`` schema metadata of a features file (see :mod:`lungscope.features.parquet`)."""
    classifier = extractor.classifier
    return {
        "run": model_source(source),
        "model": classifier.config["model"],
        "model_options": classifier.config.get("model_options", {}),
        "layer": extractor.layer,
        "feature_dim": extractor.feature_dim,
        "labels": labels,
        "classes": list(classes_for(labels)),
        "image_size": classifier.image_size,
        "checkpoint_sha256": fingerprint(source),
    }


def extract_features(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    layer: str | None = None,
    labels: str | None = None,
    batch_size: int = 32,
    engine: str = "local",
    spark_master: str = "local[*]",
    workers: int | None = None,
    show: bool | None = None,
) -> FeaturesRun:
    """Write the features of every image of ``data`` (a folder or CSV manifest) into the Parquet file ``out``.

    ``run``: a run folder, checkpoint or ``"default"``; preprocessing is the run's own. ``layer``: None for the
    input of the final Linear (the penultimate features), else a module name whose output is taken (4-D outputs
    are globally average-pooled). ``labels``: the label scheme of the ``label`` column (default: the run's).
    ``engine``: ``"local"`` (this process, files decoded in ``workers`` threads) or ``"spark"`` (a pandas UDF on
    the cluster at ``spark_master``; see :mod:`lungscope.features.spark`). A file that cannot be read is a row with
    ``error`` set. The file's columns and metadata are described in :mod:`lungscope.features.parquet`.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    out = writable_output(out)
    classifier = Classifier.load(run)
    extractor = FeatureExtractor(classifier, layer, batch_size=batch_size)
    scheme = labels or classifier.config.get("labels", "binary")
    inputs = feature_inputs(data, scheme)
    metadata = features_metadata(run, extractor, scheme)
    if engine == "spark":
        from lungscope.features.spark import extract_with_spark

        n_failed = extract_with_spark(metadata["run"], layer, metadata, inputs, out, batch_size=batch_size,
                                      master=spark_master)
    else:
        with FeatureWriter(out, metadata) as writer:
            n_failed = writer.write_rows(local_rows(extractor, inputs, workers=workers, show=show))
    return FeaturesRun(out, len(inputs), n_failed, metadata)
