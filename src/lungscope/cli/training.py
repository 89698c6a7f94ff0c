"""The training verbs: train, cv, tune."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from lungscope.cli.common import EXIT_OK, Parser, output_folder
from lungscope.cli.flags import add_config_flags, config_overrides
from lungscope.errors import ConfigError

if TYPE_CHECKING:
    from lungscope.training import TrainConfig


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of --config (if given) with the train flags over it and ``out`` from --out."""
    from lungscope.training import TrainConfig

    overrides = {"out": str(args.out), **config_overrides(args)}
    config = TrainConfig.from_yaml(args.config, **overrides) if args.config else TrainConfig.from_dict(overrides)
    if not config.data and not config.manifest:
        raise ConfigError("give the training data with --data DIR (or --manifest FILE, or data: in --config)")
    return config


def _cmd_train(args: argparse.Namespace) -> int:
    from lungscope.training import resume_config, train
    from lungscope.training.distributed import is_main_process

    config = resume_config(args.out, **config_overrides(args)) if args.resume else train_config(args)
    summary = train(config, resume=args.resume)
    if is_main_process():  # under torchrun, once
        print(json.dumps(summary, indent=2))
    return EXIT_OK


def _add_train_options(p: Parser, out_help: str) -> None:
    """--config, --out and a flag for every option of TrainConfig (added when the verb runs; it imports torch):
    shared by train, cv and tune."""
    p.add_argument("--config", type=Path, help="YAML file of options (see configs/)")
    p.add_argument("--out", type=output_folder, required=True, help=out_help)

    def add() -> None:
        from lungscope.training import TrainConfig

        add_config_flags(p, TrainConfig, skip={"out"})

    p.defer(add)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model; writes a run folder (config, split, metrics, curves, checkpoints)",
        description="Train on a patient-grouped split. A YAML --config can hold every option; flags override it. "
        "Ctrl-C leaves a resumable run: continue it with --resume --out RUN_DIR. "
        "`torchrun --nproc-per-node N -m lungscope.cli train ...` trains with N processes (data-parallel).",
    )
    _add_train_options(p, "run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.set_defaults(func=_cmd_train)


def _cmd_cv(args: argparse.Namespace) -> int:
    from lungscope.training import cross_validate
    from lungscope.training.cv import cross_site

    if args.cross_site and args.folds is not None:
        raise ConfigError("--cross-site trains one run per site, not folds; drop --folds")
    config = train_config(args)
    summary = cross_site(config) if args.cross_site else cross_validate(config, args.folds or 5)
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def _add_cv(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cv", help="k-fold cross-validation grouped by patient: a run per fold, the mean and std of each metric and "
        "the pooled out-of-fold ROC-AUC with its 95%% CI; or cross-site validation",
        description="Split --data into K patient-grouped, label-stratified folds (OUT/folds.csv), train one run per "
        "fold (OUT/fold_k, fold k validating) and summarise each fold's best epoch in OUT/cv_summary.json and .csv, "
        "with the ROC-AUC of all out-of-fold predictions (OUT/oof_predictions.csv) and its patient-bootstrap 95% CI. "
        "--cross-site instead trains on the Shenzhen images (CHNCXR_*) and tests on Montgomery (MCUCXR_*), then the "
        "other way (OUT/cross_site.json). Takes every train option; re-running the same command skips finished runs "
        "and resumes an interrupted one.",
    )
    _add_train_options(p, "folder for the folds' runs and the summary")
    p.add_argument("--folds", type=int, metavar="K", help="number of folds (default 5)")
    p.add_argument("--cross-site", action="store_true",
                   help="train on one tuberculosis site, test on the other, both ways (site from the file name)")
    p.set_defaults(func=_cmd_cv)


def _cmd_tune(args: argparse.Namespace) -> int:
    from lungscope.training.tune import load_space, tune

    space = load_space(args.space) if args.space else None
    summary = tune(train_config(args), args.trials, sampler=args.sampler, space=space, storage=args.storage,
                   study_name=args.study_name)
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune", help="hyper-parameter search with Optuna: a run per trial, the best config written out",
        description="Search learning rate, batch size, weight decay and optimiser (or the --space YAML) with Optuna, "
        "each trial a run in OUT/trial_NNN on one shared patient-grouped split (OUT/split.csv), maximising val_auc. "
        "Writes OUT/trials.csv and OUT/best_config.yaml (for `lungscope train --config`). The study is kept in "
        "OUT/study.db: re-running the same command resumes it up to --trials.",
    )
    _add_train_options(p, "folder for the trials' runs, the study and the best config")
    p.add_argument("--trials", type=int, default=20, metavar="N", help="trials the study should hold (default 20)")

    def add() -> None:
        from lungscope.training.tune import SAMPLERS

        p.add_argument("--sampler", choices=SAMPLERS, default=SAMPLERS[0],
                       help="Optuna's sampler; grid walks the space's lists of choices (default: %(default)s)")

    p.defer(add)
    p.add_argument("--space", type=Path, metavar="FILE",
                   help="YAML search space, e.g. {lr: {low: 1e-4, high: 1e-2, log: true}, batch_size: [16, 32]}")
    p.add_argument("--storage", metavar="URL", help="Optuna storage (default sqlite:///OUT/study.db)")
    p.add_argument("--study-name", help="study name in the storage (default: OUT's folder name)")
    p.set_defaults(func=_cmd_tune)



VERBS = [_add_train, _add_cv, _add_tune]

