"""Grad-CAM latency on CPU: lungscope's ``explain(model, x, "gradcam")`` against pytorch-grad-cam's ``GradCAM``.

For three-block-cnn at 128, resnet18 and cxr-resnet at 224 (``num_classes=2, in_channels=1``, random weights: latency
does not depend on the weights) and the bundled model (``default``, as lungscope runs it), the per-image latency of one
image alone and of a batch of 16, both at the model's Grad-CAM layer and explaining the predicted class. The two
implementations are timed alternately, call by call, so that the load of a shared machine falls on both alike; the
table gives the median of the repeats.

What each call does: lungscope runs a forward pass without gradients (to choose the class and report its
probability), then Captum's LayerGradCam: a forward pass and ``torch.autograd.grad`` of the class score with respect
to the layer's output only, so no weight gradients and no backward below the layer; then a bilinear upsampling of
the signed map. pytorch-grad-cam runs one forward pass and ``loss.backward()``, which computes every parameter's
gradient down to the first layer, then ReLU, min-max scaling and an OpenCV resize per image. On three-block-cnn
lungscope's extra forward pass outweighs the backward it skips; on resnet18, where nearly all of the network lies
below the last convolution, the skipped backward outweighs it. Run from the repository root (pytorch-grad-cam is
a test-only dependency):

    .venv/bin/python benchmarks/gradcam.py            # writes benchmarks/results/gradcam.md
    .venv/bin/python benchmarks/gradcam.py --quick    # smoke run; prints only
    .venv/bin/python benchmarks/gradcam.py --threads 1  # on a busy machine
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pytorch_grad_cam import GradCAM

from lungscope.explain import explain
from lungscope.inference import Classifier
from lungscope.models import create_model, gradcam_layer

RESULTS = Path(__file__).parent / "results" / "gradcam.md"
CASES = (("three-block-cnn", 128), ("resnet18", 224), ("cxr-resnet", 224), ("default", 224))
BATCH = 16
BUSY_LOAD = 0.5  # 1-minute load average above which the machine counts as shared


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def compare(name: str, size: int, batch: int, repeats: int) -> tuple[float, float]:
    """Median per-image milliseconds of (lungscope, pytorch-grad-cam) over ``repeats`` alternating calls."""
    torch.manual_seed(0)
    images = torch.randn(batch, 1, size, size)
    if name == "default":  # the bundled model as lungscope runs it: its weights, its channels-last memory format
        model = Classifier.load(name).model
        images = images.contiguous(memory_format=torch.channels_last)
    else:
        model = create_model(name).eval()
    layer_name, layer = gradcam_layer(model)
    with GradCAM(model=model, target_layers=[layer]) as reference:
        ours = lambda: explain(model, images, "gradcam", layer=layer_name)  # noqa: E731
        theirs = lambda: reference(input_tensor=images, targets=None)  # noqa: E731
        for call in (ours, theirs):  # warm-up: allocator, oneDNN kernels
            call()
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        for _ in range(repeats):
            times["ours"].append(_seconds(ours))
            times["theirs"].append(_seconds(theirs))
    return tuple(1000 * statistics.median(t) / batch for t in times.values())  # type: ignore[return-value]


def command_line() -> str:
    return shlex.join([sys.executable, *sys.argv])


def report(rows: list[tuple[str, int, int, float, float]], loads: tuple[float, float], repeats: int) -> str:
    lines = [
        "# Grad-CAM latency on CPU: lungscope vs pytorch-grad-cam",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{command_line()}`",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} CPUs, no GPU; "
        f"median of {repeats} alternating calls per cell after one warm-up call each",
        f"- 1-minute load average before / after: {loads[0]:.2f} / {loads[1]:.2f}"
        + (" -- a shared machine with other jobs running: absolute times are inflated, compare the ratios"
           if max(loads) > BUSY_LOAD else ""),
        "- models: `num_classes=2, in_channels=1`, random weights, except `default`: the bundled model (cxr-resnet, "
        "width 32, channels-last), as `lungscope explain default` runs it; target layer: each model's Grad-CAM layer "
        "(`gradcam_layer`: cxr-resnet's `relu`, else the last convolution); the "
        "predicted class is explained",
        "",
        "| model | input | batch | lungscope ms / image | pytorch-grad-cam ms / image | ratio (lungscope / pgc) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {size} | {batch} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |"
              for name, size, batch, ours, theirs in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per implementation and cell (default 9)")
    parser.add_argument("--quick", action="store_true", help="2 repeats, nothing written: a smoke run")
    parser.add_argument("--output", type=Path, help=f"Markdown file to write (default: {RESULTS})")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core); on a busy machine "
                        "1 avoids OpenMP threads waiting for each other, which slows small batches several-fold")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    load_before = os.getloadavg()[0]
    rows = []
    for name, size in CASES:
        for batch in (1, BATCH):
            ours, theirs = compare(name, size, batch, repeats)
            rows.append((name, size, batch, ours, theirs))
            print(f"{name}@{size} batch {batch}: lungscope {ours:.1f} ms/image, pytorch-grad-cam {theirs:.1f} ms/image",
                  flush=True)
    text = report(rows, (load_before, os.getloadavg()[0]), repeats)
    print(text)
    if not args.quick:
        output = args.output or RESULTS
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
