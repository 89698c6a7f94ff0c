"""The Spark engine: features and batch prediction of archives on a Spark cluster (or ``local[*]``). This module
holds the engine and the features job; batch prediction's job is :func:`lungscope.predict.predict_with_spark`.

Spark schedules; lungscope only says what to run on a partition. The driver lists the files (paths, labels,
patients) into a DataFrame, range-partitioned in input order; each partition runs through ``mapInPandas`` in a
Python worker, which loads the model once (cached by run path: Spark reuses its Python workers between tasks) and
decodes, runs and emits rows a batch at a time. A file that cannot be read becomes a row with its error, never a
failed task. ``mapInPandas`` rather than ``predict_batch_udf``: the input is string paths, not tensors, and a row
must carry an error and null features, which a tensor-in, tensor-out UDF cannot express.

Spark writes the rows as part files; the driver then streams them, in partition order, into the one file the user
named (see :func:`staging_folder`). The paths, the run folder and the output's folder must be readable from every
executor: a shared file system on a cluster.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import pandas as pd
from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession

from lungscope.errors import ConfigError
from lungscope.features.extract import FeatureExtractor, local_rows
from lungscope.features.parquet import (
    COLUMNS,
    FeatureWriter,
    part_batches,
    rows_per_group,
)
from lungscope.inference import Classifier

ROWS_PER_TASK = 2000  # a task's share of the files: small enough to balance, large enough to amortise its start
FEATURE_COLUMNS = "path string, label string, patient_id string, features array<float>, error string"
_LOG4J = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = stderr
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
"""


@contextmanager
def spark_session(master: str = "local[*]", *, driver_memory: str = "2g") -> Iterator[SparkSession]:
    """The active Spark session if there is one (left running), else a new one on ``master``, stopped on exit.

    A new session has Arrow transfers on, no web UI, errors-only logging and, on a local master, Python workers
    running this interpreter (so they import what the driver imports) on the loopback address.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    if master != "yarn" and not master.startswith(("local", "spark://", "k8s://")):
        raise ConfigError(f"Spark master {master!r}: must be yarn or start with local, spark:// or k8s://")
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="lungscope-spark-") as folder:
        log_config = Path(folder, "log4j2.properties")
        log_config.write_text(_LOG4J)
        builder = (
            SparkSession.builder.master(master)
            .appName("lungscope")
            .config("spark.driver.memory", driver_memory)
            .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={log_config.as_uri()}")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", str(sys.stderr.isatty()).lower())
        )
        try:
            spark = builder.getOrCreate()
        except (PySparkException, Py4JError) as error:  # a bad master URL, no Java...: the first line says which
            raise ConfigError(f"could not start Spark on {master!r}: {str(error).strip().splitlines()[0]}") from None
        try:
            yield spark
        finally:
            spark.stop()


@functools.cache
def worker_classifier(source: str) -> Classifier:
    """The classifier of a run, loaded once per Python worker (the cache lives as long as the worker)."""
    return Classifier.load(source)


@functools.cache
def worker_extractor(source: str, layer: str | None, batch_size: int) -> FeatureExtractor:
    """A :class:`FeatureExtractor` on :func:`worker_classifier`, built once per Python worker."""
    return FeatureExtractor(worker_classifier(source), layer, batch_size=batch_size)


def partitions(spark: SparkSession, frame: pd.DataFrame, schema: str) -> DataFrame:
    """``frame`` as a Spark DataFrame with an ``order`` column, split into tasks of about ``ROWS_PER_TASK`` rows
    that keep the input order (partition i holds earlier rows than partition i + 1)."""
    tasks = max(spark.sparkContext.defaultParallelism, math.ceil(len(frame) / ROWS_PER_TASK))
    table = spark.createDataFrame(frame.assign(order=range(len(frame))), f"{schema}, order long")
    return table.repartitionByRange(tasks, "order").sortWithinPartitions("order")


def _chunks(rows: Iterator[dict[str, Any]], size: int, columns: list[str]) -> Iterator[pd.DataFrame]:
    while chunk := list(islice(rows, size)):
        yield pd.DataFrame(chunk, columns=columns)


def _feature_task(
    source: str, layer: str | None, batch_size: int
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        extractor = worker_extractor(source, layer, batch_size)
        size = min(rows_per_group(extractor.feature_dim), 4 * batch_size)
        for frame in frames:
            yield from _chunks(local_rows(extractor, frame, show=False), size, list(COLUMNS))
    return run


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A folder for Spark's part files beside ``out``, removed afterwards.

    Why one file and not Spark's folder of parts: the features file carries its contract in the Parquet schema
    metadata, which Spark cannot write, and one file is what ``--out X.parquet`` / ``--csv X.csv`` promise to
    pandas, train-head and a spreadsheet. Spark still does the expensive part in parallel (decoding and the
    model) and writes in parallel; the driver's sequential copy of the parts is cheap next to it.
    """
    staging = out.with_name(f".{out.name}.spark")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def part_files(staging: Path, suffix: str) -> list[Path]:
    return sorted(staging.glob(f"part-*{suffix}"))  # part-00000-... : partition order is input order


def extract_with_spark(
    source: str, layer: str | None, metadata: dict[str, Any], inputs: pd.DataFrame, out: Path, *,
    batch_size: int = 32, master: str = "local[*]",
) -> int:
    """Write the features file ``out`` (the contract of :mod:`lungscope.features.parquet`) for the rows of
    :func:`~lungscope.features.api.feature_inputs`, computed by Spark; returns how many rows have an error."""
    with spark_session(master) as spark, staging_folder(out) as staging:
        table = partitions(spark, inputs, "path string, label string, patient_id string, error string")
        table.mapInPandas(_feature_task(source, layer, batch_size), FEATURE_COLUMNS).write.parquet(str(staging))
        with FeatureWriter(out, metadata) as writer:
            failed = 0
            for batch in part_batches(part_files(staging, ".parquet"), writer.rows):
                writer.write_batch(batch)
                failed += len(batch) - batch.column("error").null_count
    return failed
