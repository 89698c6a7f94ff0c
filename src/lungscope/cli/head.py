"""The train-head verb: a dense head and a logistic-regression baseline on extracted features."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungscope.cli.common import EXIT_OK, output_folder, printed_warnings
from lungscope.cli.flags import add_config_flags, config_overrides


def _table(summary: dict) -> str:
    """Accuracy and macro ROC-AUC (95% CI) of both heads on validation and test."""
    from lungscope.evaluation.formatting import format_metric

    lines = [(f"{summary['labels']} head on {summary['backbone']} features ({summary['feature_dim']}-d, "
              f"{summary['layer']}); split: {summary['split']}")]
    for name in ("dense", "baseline"):
        for side in ("val", "test"):
            report = summary[name][side]
            cells = [f"{metric} {format_metric(report['metrics'][metric])}" for metric in ("accuracy", "roc_auc")]
            lines.append(f"{name:8s} {side:4s} ({report['n_images']} images, {report['n_patients']} patients): "
                         + ", ".join(cells))
    return "\n".join(lines)


def _cmd_train_head(args: argparse.Namespace) -> int:
    from lungscope.training.head import HeadConfig, train_head

    config = HeadConfig(features=str(args.features), out=str(args.out), **config_overrides(args))
    with printed_warnings("train-head"):
        summary = train_head(config)
    print(_table(summary))
    print(f"wrote {args.out}/best.pt (dense head), baseline.pt, summary.json; "
          f"evaluate with: lungscope evaluate {args.out} --data {args.out}/split.csv --split test")
    return EXIT_OK


def _add_train_head(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-head", help="train a dense head (and a logistic-regression baseline) on a features file",
        description="Fit our source's dense head (sigmoid hidden layers, dropout, softmax) and a scikit-learn "
        "logistic regression on standardised features from `lungscope features`: trained on the train rows, chosen "
        "on the validation rows, measured on the test rows with patient-bootstrap 95% CIs. Rows keep the side of "
        "the backbone run's split.csv (or --manifest). Writes a run folder whose best.pt is the two-stage model "
        "(backbone + dense head) that predict, evaluate and explain take; baseline.pt holds the baseline's.",
    )
    p.add_argument("features", type=Path, help="features Parquet file from `lungscope features`")
    p.add_argument("--out", type=output_folder, required=True, help="run folder to write")

    def add() -> None:
        from lungscope.training.head import HeadConfig

        add_config_flags(p, HeadConfig, skip={"features", "out"})

    p.defer(add)
    p.set_defaults(func=_cmd_train_head)


VERBS = [_add_train_head]
