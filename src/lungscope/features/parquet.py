"""The features file: one Parquet file, one row per image, and what produced it in the schema metadata.

Columns: ``path`` (string), ``label`` (string: the class under the recorded scheme; null when the file had none),
``patient_id`` (string), ``features`` (list of float32, null when the file could not be read) and ``error`` (null, or
why the file could not be read). The schema metadata key ``lungscope`` holds JSON::

    {"run": absolute run path or "default", "model": registry name, "model_options": {...},
     "layer": "classifier.0:input" (the final Linear's input, the default) or a module name (its output),
     "feature_dim": int, "labels": "binary" | "three-class" | "tb", "classes": [...], "image_size": int,
     "checkpoint_sha256": the SHA-256 of the checkpoint the features came from (files before it have none)}

``classes`` are the label scheme's classes, in index order. 4-D outputs of a named layer are globally
average-pooled. pandas reads the file (``pd.read_parquet``); :func:`read_features` returns the rows and the metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lungscope.data.naming import output_problem
from lungscope.errors import ConfigError

METADATA_KEY = "lungscope"
COLUMNS = ("path", "label", "patient_id", "features", "error")
SCHEMA = pa.schema([
    ("path", pa.string()),
    ("label", pa.string()),
    ("patient_id", pa.string()),
    ("features", pa.list_(pa.float32())),
    ("error", pa.string()),
])
_ROW_GROUP_BYTES = 64 * 2**20


def rows_per_group(feature_dim: int) -> int:
    """Rows in a row group of about 64 MiB of features: bounded memory whatever the vector length."""
    return max(1, min(65536, _ROW_GROUP_BYTES // (4 * max(1, feature_dim))))


def writable_output(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute, its folder created; ConfigError (one line) when it cannot be written there."""
    path = Path(path).absolute()
    if (problem := output_problem(path)) is not None:
        raise ConfigError(f"{path}: {problem}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{path}: cannot create its folder ({error.strerror})") from None
    return path


def _batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """Rows as an Arrow batch, the vectors copied in one block (``from_pylist`` converts them element by element,
    several times slower)."""
    vectors = [row["features"] for row in rows]
    missing = np.array([v is None for v in vectors])
    lengths = [0 if v is None else len(v) for v in vectors]
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
    values = np.concatenate([np.asarray(v, np.float32) for v in vectors if v is not None] or [np.empty(0, np.float32)])
    columns = {name: pa.array([row[name] for row in rows], pa.string()) for name in COLUMNS if name != "features"}
    columns["features"] = pa.ListArray.from_arrays(offsets, pa.array(values, pa.float32()), mask=pa.array(missing))
    return pa.RecordBatch.from_pydict(columns, schema=SCHEMA)


class FeatureWriter:
    """Streams row dicts (or Arrow batches) into ``path`` with the metadata; the file appears whole at the end
    (written beside it, then renamed), so an interrupted run never leaves a half-written features file."""

    def __init__(self, path: str | os.PathLike[str], metadata: dict[str, Any]) -> None:
        self.path = writable_output(path)
        self.rows = rows_per_group(int(metadata["feature_dim"]))
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata)})
        # no dictionary for the vectors: float values rarely repeat, and trying costs time
        self._writer = pq.ParquetWriter(self._tmp, schema, use_dictionary=[c for c in COLUMNS if c != "features"])

    def write_rows(self, rows: Iterable[dict[str, Any]]) -> int:
        """Write ``{column: value}`` dicts (``features``: a float32 array or None), a row group at a time; returns
        how many had an error."""
        buffer: list[dict[str, Any]] = []
        failed = 0
        for row in rows:
            buffer.append(row)
            failed += row["error"] is not None
            if len(buffer) >= self.rows:
                self.write_batch(_batch(buffer))
                buffer = []
        if buffer:
            self.write_batch(_batch(buffer))
        return failed

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Write a batch of the five columns (list field names and nullability may differ, as Spark writes them)."""
        self._writer.write_table(pa.Table.from_batches([batch]).select(list(COLUMNS)).cast(SCHEMA))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._writer.close()
        if kind is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def part_batches(parts: Iterable[str | os.PathLike[str]], rows: int) -> Iterator[pa.RecordBatch]:
    """The batches of Parquet part files, in the order given, ``rows`` at a time (memory stays bounded)."""
    for part in parts:
        yield from pq.ParquetFile(part).iter_batches(batch_size=rows)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``lungscope`` metadata of a features file; ConfigError if it is not one."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as error:
        raise ConfigError(f"{path}: not a readable Parquet file ({error})") from None
    if METADATA_KEY.encode() not in metadata:
        raise ConfigError(f"{path}: not a lungscope features file (no {METADATA_KEY!r} schema metadata)")
    return json.loads(metadata[METADATA_KEY.encode()])


def read_features(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows of a features file (``features``: float32 arrays, None where ``error`` is set) and its metadata."""
    metadata = read_metadata(path)
    return pd.read_parquet(path), metadata
