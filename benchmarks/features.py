"""Feature extraction throughput: the local engine against Spark local[1] and local[2], on 1,000 shared images.

    .venv/bin/python benchmarks/features.py [--n 1000] [--repeats 2] [--models default,resnet18]

Runs what `lungscope features RUN DATA --out X.parquet [--engine spark --spark-master local[K]]` runs, decoding and
the Parquet file included, for the bundled model (shallow-cnn@64: 61,504 features per image, the input of its
Linear) and a randomly initialised resnet18@224 run made in a temporary folder (512 features; no download). Spark
sessions are started before the clock (a cluster is started once); the first job of a session, which also starts
the Python workers and loads the model in each, is reported apart from the best of the later ones. Prints images/s,
ratios to the local engine, and writes benchmarks/results/features.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from lungscope.checkpoint import save_checkpoint
from lungscope.data.datasets import scan_dataset
from lungscope.features import extract_features
from lungscope.features.spark import spark_session
from lungscope.models import create_model
from lungscope.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]
ENGINES = [("local", None), ("spark", "local[1]"), ("spark", "local[2]")]


def random_run(model: str, image_size: int, folder: Path) -> Path:
    """A run folder holding a randomly initialised model: what Classifier.load reads, no training, no download."""
    run = folder / f"{model}-random"
    run.mkdir()
    config = TrainConfig(model=model, image_size=image_size)
    state = {"model": create_model(model, num_classes=2).state_dict(), "config": config.to_dict(),
             "classes": ["NORMAL", "PNEUMONIA"], "image_size": image_size,
             "preprocessing": config.preprocessing(image_size).to_dict()}
    save_checkpoint(state, run / "best.pt")
    return run


def rate(run: str | Path, manifest: Path, out: Path, engine: str, master: str | None) -> tuple[float, int]:
    """Images per second of one extraction, and the length of its vectors."""
    started = time.perf_counter()
    result = extract_features(run, manifest, out, engine=engine, spark_master=master or "local[*]", show=False)
    seconds = time.perf_counter() - started
    if result.n_failed:
        raise SystemExit(f"{result.n_failed} files could not be read")
    return result.n_rows / seconds, result.metadata["feature_dim"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "chest_xray" / "train")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after the first, per engine")
    parser.add_argument("--models", default="default,resnet18")
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = folder / "images.csv"
        scan_dataset(args.data).sample(n=args.n, random_state=0).to_csv(manifest, index=False)
        runs = {name: "default" if name == "default" else random_run(name, 224, folder)
                for name in args.models.split(",")}
        for engine, master in ENGINES:
            label = engine if master is None else f"spark {master}"
            started = time.perf_counter()
            with spark_session(master) if master else contextlib.nullcontext():
                session = time.perf_counter() - started if master else None
                for name, run in runs.items():
                    out = folder / f"{name}.parquet"
                    first, dim = rate(run, manifest, out, engine, master)
                    best = max(rate(run, manifest, out, engine, master)[0] for _ in range(args.repeats))
                    rows.append({"model": name, "dim": dim, "engine": label, "first": first, "best": best,
                                 "session": session})
                    print(f"{name:10} {label:16} first {first:7.1f} img/s, best of {args.repeats} {best:7.1f} img/s",
                          flush=True)
    load_after = os.getloadavg()
    table = pd.DataFrame(rows)
    local = table[table["engine"] == "local"].set_index("model")["best"]
    lines = [
        "# Feature extraction throughput: local engine vs Spark",
        "",
        (f"{datetime.date.today()}, torch {torch.__version__}, {os.cpu_count()} cores, load average (1, 5, 15 min) "
        f"before {', '.join(f'{x:.2f}' for x in load_before)}, after {', '.join(f'{x:.2f}' for x in load_after)}. "
        f"Command: `python benchmarks/features.py --n {args.n} --repeats {args.repeats} --models {args.models}`. "
        f"{args.n:,} shared JPEGs (224x224, a seeded sample), decoding and writing the Parquet file included. "
        "The local engine runs torch on every core and decodes in threads; a Spark task runs torch on one thread "
        "(Spark sets OMP_NUM_THREADS to spark.task.cpus), local[K] runs K tasks at once. \"first\" is a session's "
        "first job (Python workers started, the model loaded in each); \"best\" the best later job."),
        "",
        "| model | features | engine | first img/s | best img/s | best / local | session start (s) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        session = "" if row["session"] is None else f"{row['session']:.1f}"
        lines.append(f"| {row['model']} | {row['dim']} | {row['engine']} | {row['first']:.1f} | "
                     f"{row['best']:.1f} | {row['best'] / local[row['model']]:.2f} | {session} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks" / "results" / "features.md").write_text(text)


if __name__ == "__main__":
    main()
