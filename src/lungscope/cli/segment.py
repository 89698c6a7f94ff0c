"""The lung segmentation verbs and the orientation check's trainer: segment, train-segmenter, train-orientation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lungscope.cli.common import EXIT_OK, EXIT_PARTIAL, output_folder, report_skipped
from lungscope.cli.flags import add_config_flags, config_overrides


def _cmd_segment(args: argparse.Namespace) -> int:
    from lungscope.orientation import read_upright
    from lungscope.segmentation.files import segment_files

    result = segment_files(args.paths, args.out, segmenter=args.model, reader=read_upright)
    report_skipped("segment", result["failed"])
    print(f"segmented {len(result['written'])} image(s): masks in {args.out / 'masks'}, overlays in "
          f"{args.out / 'overlays'}")
    return EXIT_PARTIAL if result["failed"] else EXIT_OK


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="lung masks (255 lung, 0 not) and overlays of X-ray files, at each file's resolution up to "
        "2,048 pixels a side",
        description="Segment the lung fields of files, folders or glob patterns with the bundled lung U-Net (or "
        "--model): OUT/masks/<stem>.png and OUT/overlays/<stem>.png. The two largest regions are kept and their "
        "holes filled. Unreadable files, and X-rays refused as predict refuses them (turned, or not a frontal chest "
        "X-ray), are listed and skipped (exit code 2).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--out", type=output_folder, required=True, metavar="DIR", help="output folder")
    p.add_argument("--model", default="default", help="segmenter checkpoint or run folder (default: the bundled one)")
    p.set_defaults(func=_cmd_segment)


def _cmd_train_segmenter(args: argparse.Namespace) -> int:
    from lungscope.training.segmenter import SegmenterConfig, train_segmenter

    config = SegmenterConfig(**config_overrides(args))
    print(json.dumps(train_segmenter(args.images, args.masks, args.out, config), indent=2))
    return EXIT_OK


def _add_train_segmenter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-segmenter", help="train a lung U-Net on X-rays and binary lung masks of the same file names",
        description="Train the lung-unet on a patient-grouped split of IMAGES/MASKS pairs (masks: 0 background, "
        "255 lung), keep the epoch with the best validation Dice, and report Dice and IoU on the held-out part. "
        "Writes OUT/best.pt (usable by segment --model and roi: lungs), config.yaml, split.csv, metrics.csv, "
        "summary.json.",
    )
    p.add_argument("images", type=Path, metavar="IMAGES", help="folder of X-rays")
    p.add_argument("masks", type=Path, metavar="MASKS", help="folder of lung masks named as the X-rays")
    p.add_argument("--out", type=output_folder, required=True, metavar="DIR", help="run folder")

    def add() -> None:
        from lungscope.training.segmenter import SegmenterConfig

        add_config_flags(p, SegmenterConfig)

    p.defer(add)
    p.set_defaults(func=_cmd_train_segmenter)


def _cmd_train_orientation(args: argparse.Namespace) -> int:
    from lungscope.training.orientation import OrientationConfig, train_orientation

    config = OrientationConfig(**config_overrides(args))
    print(json.dumps(train_orientation(args.folders, args.out, config), indent=2))
    return EXIT_OK


def _add_train_orientation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-orientation", help="train the check that refuses sideways, upside-down or negative X-rays",
        description="Train the orientation check on the X-rays under FOLDERS (upright, in their usual grey scale; "
        "no labels needed): each is shown turned by quarter turns and inverted or not, and the network learns "
        "which. Keeps the epoch with the best validation accuracy and scores the held-out patients. Writes "
        "OUT/best.pt, config.yaml, split.csv, metrics.csv, summary.json.",
    )
    p.add_argument("folders", nargs="+", type=Path, metavar="FOLDERS", help="folders of upright X-rays")
    p.add_argument("--out", type=output_folder, required=True, metavar="DIR", help="run folder")

    def add() -> None:
        from lungscope.training.orientation import OrientationConfig

        add_config_flags(p, OrientationConfig)

    p.defer(add)
    p.set_defaults(func=_cmd_train_orientation)


VERBS = [_add_segment, _add_train_segmenter, _add_train_orientation]
