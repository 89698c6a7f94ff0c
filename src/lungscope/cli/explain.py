"""The explanation verbs: explain, activations, filters, explain-check."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungscope.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    MODEL_HELP,
    add_explain_methods,
    add_roi_option,
    output_file,
    output_folder,
    printed_warnings,
    report_skipped,
    whole_number,
)
from lungscope.errors import ConfigError

LAYER_HELP = "layer for gradcam/guided-gradcam (default: the model's Grad-CAM layer, else its last convolution)"


def _cmd_explain(args: argparse.Namespace) -> int:
    from lungscope.explain.base import DEFAULT_METHOD
    from lungscope.explain.files import explain_files

    # RUN_DIR first, or the model as --model (predict's and serve's way): then every positional is an image
    run, paths = (args.model, [args.run, *args.paths]) if args.model else (args.run, args.paths)
    if not paths:
        raise ConfigError("no image to explain: lungscope explain RUN_DIR PATH ..., or --model MODEL PATH ...")
    with printed_warnings(args.verb):
        result = explain_files(run, paths, args.out, args.method or [DEFAULT_METHOD], sign=args.sign,
                               layer=args.layer, batch_size=args.batch_size, device=args.device, cmap=args.cmap,
                               alpha=args.alpha, threshold=args.threshold, roi=args.roi)
    report_skipped("explain", result["failed"])
    print(f"explained {result['images']} image(s): {len(result['written'])} figures in {args.out}, maps in "
          f"{result['maps']}")
    return EXIT_PARTIAL if result["failed"] else EXIT_OK


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="explanation maps of a run's predictions: a figure per image and method, raw maps in maps.npz",
        description="For each image (folders are searched) and method: OUT/<stem>_<method>.png with the X-ray, the map "
        "and the overlay, titled with the prediction, and the raw signed maps at the model's resolution in "
        "OUT/maps.npz under <stem>/<method>. Unreadable files are listed and skipped (exit code 2). A method the run's "
        "explain-check flagged prints a warning; one it did not measure does too if the literature finds it fails "
        "the model-randomisation test.",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help=MODEL_HELP)
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="image files and folders")
    p.add_argument("--model", help="the model instead of RUN_DIR, as predict and serve take it; every positional is "
                   "then an image")
    add_explain_methods(p, "--method", "M", "one or more of %(choices)s", show_default=True)
    p.add_argument("--sign", default="positive", help="positive (default), negative, absolute, or all: both signs in a "
                   "diverging colormap")
    p.add_argument("--layer", metavar="NAME", help=LAYER_HELP)
    p.add_argument("--out", type=output_folder, required=True, help="folder for the figures and maps.npz")
    p.add_argument("--cmap", help="matplotlib colormap (default jet; RdBu_r for --sign all)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the heatmap (default 0.5)")
    p.add_argument("--threshold", type=float, default=0.2,
                   help="weaker values are transparent (default 0.2 of the max)")
    p.add_argument("--batch-size", type=whole_number(1), default=16, help="images per batch (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_roi_option(p)
    p.set_defaults(func=_cmd_explain)


def _region(text: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 (four fractions), got {text!r}") from None
    return x0, y0, x1, y1


def _cmd_activations(args: argparse.Namespace) -> int:
    from lungscope.explain.files import activation_files

    for path in activation_files(args.run, args.image, args.out, layer=args.layer, top=args.top, region=args.region,
                                 device=args.device):
        print(f"wrote {path}")
    return EXIT_OK


def _add_activations(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "activations", help="a layer's activations on one image: a channel grid and the most active channels",
        description="Write OUT/<stem>_<layer>_activations.png (the layer's channels) and OUT/<stem>_<layer>_topK.png "
        "(the K channels with the largest mean activation, over the image or inside --region, over the X-ray).",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help=MODEL_HELP)
    p.add_argument("image", type=Path, metavar="IMAGE", help="an image file")
    p.add_argument("--layer", metavar="NAME", help="layer name, as in the model's named_modules (default: last conv)")
    p.add_argument("--top", type=whole_number(1), default=8, metavar="K",
                   help="number of most active channels (default 8)")
    p.add_argument("--region", type=_region, metavar="X0,Y0,X1,Y1",
                   help="rank channels inside this box, in fractions of the model input (e.g. 0,0,0.5,1: left half)")
    p.add_argument("--out", type=output_folder, required=True, help="folder for the figures")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_activations)


def _cmd_filters(args: argparse.Namespace) -> int:
    from lungscope.explain.files import filter_files

    print(f"wrote {filter_files(args.run, args.out, layer=args.layer)}")
    return EXIT_OK


def _add_filters(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filters", help="a convolution's kernels as a grid (default: the first layer's)",
                       description="Write OUT/filters_<layer>.png: each kernel of the convolution on one signed scale.")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help=MODEL_HELP)
    p.add_argument("--layer", metavar="NAME", help="a convolution's name (default: the first)")
    p.add_argument("--out", type=output_folder, required=True, help="folder for the figure")
    p.set_defaults(func=_cmd_filters)


def _cmd_explain_check(args: argparse.Namespace) -> int:
    from lungscope.explain import format_check
    from lungscope.explain.files import check_files

    report = check_files(args.run, args.data, args.json, n=args.n, masks=args.masks, split=args.split,
                         methods=args.method, layer=args.layer, seed=args.seed, batch_size=args.batch_size,
                         device=args.device)
    print(format_check(report))
    report_skipped("explain-check", report["failed"])
    print(f"\nwrote {args.json} and {args.json.with_suffix('.png')}")
    return EXIT_OK


def _add_explain_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain-check", help="how far to trust each method's maps: faithfulness, randomisation sanity, lung share",
        description="On --n images of --data, per method: deletion and insertion curves and their areas (Petsiuk et "
        "al. 2018); the Spearman correlation of maps under cascading randomisation of the weights (Adebayo et al. "
        "2018), flagged at >= 0.5; with --masks (lung masks of the same file names), the share of positive map mass "
        "inside the lung fields. Writes --json OUT, a figure beside it (.png) and RUN_DIR/explain_check.json, which "
        "`lungscope explain` reads to warn about flagged methods.",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help=MODEL_HELP)
    p.add_argument("--data", type=Path, required=True, help="folder or CSV manifest, e.g. RUN_DIR/split.csv")
    p.add_argument("--split", help="use only the rows of this split of a manifest (e.g. test: held-out patients)")
    p.add_argument("--n", type=whole_number(1), default=100,
                   help="images drawn at random (seeded) from --data (default 100)")
    p.add_argument("--masks", type=Path, metavar="DIR", help="lung masks named as the images (1/255 = lung)")
    add_explain_methods(p, "--method", "M", "methods to check, of %(choices)s (default: all)")
    p.add_argument("--layer", metavar="NAME", help=LAYER_HELP)
    p.add_argument("--json", type=output_file, required=True, metavar="OUT", help="report to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the image draw and the randomisation (default 0)")
    p.add_argument("--batch-size", type=whole_number(1), default=16, help="images per batch (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_explain_check)


VERBS = [_add_explain, _add_activations, _add_filters, _add_explain_check]

