"""The features verb: a data set's feature vectors into one Parquet file, locally or on Spark."""

from __future__ import annotations

import argparse

from lungscope.cli.common import EXIT_OK, EXIT_PARTIAL, MODEL_HELP, add_labels_option, output_file, whole_number


def _cmd_features(args: argparse.Namespace) -> int:
    from lungscope.features import extract_features

    run = extract_features(args.run, args.data, args.out, layer=args.layer, labels=args.labels,
                           batch_size=args.batch_size, engine=args.engine, spark_master=args.spark_master)
    meta = run.metadata
    print(f"wrote {run.n_rows} row(s) of {meta['feature_dim']} features ({meta['layer']}) to {run.path}; "
          f"{run.n_failed} could not be read")
    return EXIT_PARTIAL if run.n_failed else EXIT_OK


def _add_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features", help="penultimate-layer (or any layer's) features of a data set into one Parquet file",
        description="One row per image: path, label, patient_id, features (float32 list) and error (why a file could "
        "not be read; its features are then null). By default the features are the input of the model's final "
        "Linear; --layer takes a module's output instead, globally average-pooled when it is a feature map. The "
        "Parquet schema metadata key 'lungscope' records the run, model, layer, feature_dim, labels, classes and "
        "image_size (what train-head reads). Exit code 0 when every file was read, 2 when some could not be.",
    )
    p.add_argument("run", metavar="RUN_DIR", help=MODEL_HELP)
    p.add_argument("data", metavar="DATA", help="a data set folder or CSV manifest (path,label[,patient_id])")
    p.add_argument("--out", type=output_file, required=True, metavar="FEATURES.parquet",
                   help="the Parquet file to write")
    p.add_argument("--layer", metavar="NAME", help="a module name (see the error for the list; default: the input "
                   "of the final Linear)")
    add_labels_option(p, "label scheme (default: the run's)")

    def add() -> None:
        from lungscope.features.api import ENGINES

        p.add_argument("--engine", choices=ENGINES, default=ENGINES[0],
                       help="local (this process, default) or spark (a pandas UDF per partition)")

    p.defer(add)
    p.add_argument("--spark-master", default="local[*]", metavar="URL", help="Spark master (default local[*])")
    p.add_argument("--batch-size", type=whole_number(1), default=32, help="images per model batch (default 32)")
    p.set_defaults(func=_cmd_features)


VERBS = [_add_features]
