"""Size and CPU speed of every registry model: the README's model table.

For each network of ``lungscope.models.list_models()``, built with ``num_classes=2, in_channels=1`` and random
weights, it measures:

- parameters;
- forward GFLOPs of one image at the spec's input size, from ``torch.utils.flop_counter.FlopCounterMode``, which
  counts convolutions and matrix products only and a multiply-add as 2 FLOPs (FLOPs = 2 x MACs; the "GFLOPs" that
  torchvision and most papers quote are MACs, half these);
- training images/s: forward + backward + Adam step with cross-entropy on a fixed random batch;
- inference images/s: eval mode under ``torch.inference_mode``, in the default (NCHW) memory format and in
  channels_last, their ratio, and the achieved GFLOP/s as a fraction of the CPU's fp32 peak (``--peak-gflops``).

Batch sizes shrink for the heavy networks so that one step stays near ``STEP_BUDGET_GFLOP``; the table says which
were used. Each measurement runs warm-up steps for about a second, then timed steps until it has at least 2 steps
and 3 s. All 13 models took 12 minutes on 2 cores shared with other jobs (load 4-6); an idle machine is faster.
Each model runs in a fresh process. Run from the repository root:

    .venv/bin/python benchmarks/models.py                         # every model; writes benchmarks/results/models.md
    .venv/bin/python benchmarks/models.py --models resnet18,shallow-cnn --quick   # smoke run; prints only
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lungscope.errors import ConfigError
from lungscope.models import count_parameters, create_model, get_spec, list_models

RESULTS = Path(__file__).parent / "results" / "models.md"
PEAK_GFLOPS = 150.0  # 2 Zen 3 cores x 2 FMA units x 8 fp32 lanes x 2 FLOPs x ~2.35 GHz
STEP_BUDGET_GFLOP = 100.0  # batch sizes are cut so one step costs about this (a training step ~ 3 x forward)
MAX_TRAIN_BATCH, MAX_INFER_BATCH, MIN_BATCH = 16, 32, 2  # 2: batch norm needs more than one value per channel
BUSY_LOAD = 0.5  # 1-minute load average above which the machine counts as shared


@dataclass(frozen=True)
class Timing:
    """How long each measurement runs: warm-up for ``warmup_s`` (at least one step), then timed steps."""

    warmup_s: float
    min_steps: int
    min_s: float


FULL = Timing(warmup_s=1.0, min_steps=2, min_s=3.0)
QUICK = Timing(warmup_s=0.0, min_steps=1, min_s=0.0)


@dataclass(frozen=True)
class Result:
    name: str
    input_size: int
    parameters: int
    gflops: float  # forward, one image
    train_batch: int
    train_ips: float
    infer_batch: int
    infer_ips: float
    infer_cl_ips: float  # channels_last


def forward_gflops(model: nn.Module, input_size: int) -> float:
    """Forward GFLOPs of one 1-channel image (FlopCounterMode: conv/matmul only, FLOPs = 2 x MACs)."""
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, input_size, input_size))
    return counter.get_total_flops() / 1e9


def batch_size(gflop_per_image: float, max_batch: int) -> int:
    """Largest power of two in [MIN_BATCH, max_batch] whose step costs at most STEP_BUDGET_GFLOP."""
    batch = max_batch
    while batch > MIN_BATCH and batch * gflop_per_image > STEP_BUDGET_GFLOP:
        batch //= 2
    return batch


def images_per_second(step: Callable[[], None], batch: int, timing: Timing) -> float:
    """Run ``step`` to warm up, then time it for at least ``timing.min_steps`` steps and ``timing.min_s`` seconds."""
    start = time.perf_counter()
    step()
    while time.perf_counter() - start < timing.warmup_s:
        step()
    steps, start = 0, time.perf_counter()
    while steps < timing.min_steps or time.perf_counter() - start < timing.min_s:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def train_images_per_second(model: nn.Module, input_size: int, batch: int, timing: Timing) -> float:
    """Images/s of forward + backward + Adam step with cross-entropy on one fixed random batch."""
    images = torch.randn(batch, 1, input_size, input_size)
    labels = torch.randint(0, 2, (batch,))
    loss_fn, optimizer = nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()

    return images_per_second(step, batch, timing)


def infer_images_per_second(
    model: nn.Module, input_size: int, batch: int, timing: Timing, memory_format: torch.memory_format
) -> float:
    """Images/s of eval-mode forward passes under inference_mode, model and input in ``memory_format``."""
    model.eval().to(memory_format=memory_format)
    images = torch.randn(batch, 1, input_size, input_size).contiguous(memory_format=memory_format)

    def step() -> None:
        model(images)

    with torch.inference_mode():
        return images_per_second(step, batch, timing)


def benchmark(name: str, timing: Timing) -> Result:
    """Every measurement of one registry model."""
    torch.manual_seed(0)
    spec = get_spec(name)
    model = create_model(name, num_classes=2, in_channels=1)
    gflops = forward_gflops(model, spec.input_size)
    train_batch = batch_size(3 * gflops, MAX_TRAIN_BATCH)
    infer_batch = batch_size(gflops, MAX_INFER_BATCH)
    train_ips = train_images_per_second(model, spec.input_size, train_batch, timing)
    infer = [
        infer_images_per_second(model, spec.input_size, infer_batch, timing, memory_format)
        for memory_format in (torch.contiguous_format, torch.channels_last)
    ]
    return Result(name, spec.input_size, count_parameters(model), gflops, train_batch, train_ips, infer_batch, *infer)


def benchmark_in_fresh_process(name: str, timing: Timing) -> Result:
    """:func:`benchmark` in a new process: no model's speed depends on what the ones before it left in memory."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(benchmark, name, timing).result()


def markdown_table(results: list[Result], peak_gflops: float) -> str:
    """One row per model: size, cost, training and inference throughput, channels_last ratio, share of peak."""

    def achieved(ips: float, gflops: float) -> str:
        return f"{ips * gflops:.3g} ({100 * ips * gflops / peak_gflops:.2g}%)"

    lines = [
        "| model | input | params (M) | GFLOPs / image | train batch | train img/s | inference batch "
        "| inference img/s | channels_last img/s | channels_last ratio | GFLOP/s (% peak) | channels_last GFLOP/s "
        "(% peak) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.input_size} | {r.parameters / 1e6:.2f} | {r.gflops:.3g} | {r.train_batch} "
            f"| {r.train_ips:.3g} | {r.infer_batch} | {r.infer_ips:.3g} | {r.infer_cl_ips:.3g} "
            f"| {r.infer_cl_ips / r.infer_ips:.2f} | {achieved(r.infer_ips, r.gflops)} "
            f"| {achieved(r.infer_cl_ips, r.gflops)} |"
        )
    return "\n".join(lines)


def command_line() -> str:
    """The command as typed, with LD_PRELOAD if set (it changes the allocator, hence the timings)."""
    preload = os.environ.get("LD_PRELOAD")
    words = [sys.executable, *sys.argv]
    return (f"LD_PRELOAD={shlex.quote(preload)} " if preload else "") + shlex.join(words)


def report(table: str, loads: tuple[float, float], peak_gflops: float, quick: bool) -> str:
    """The results file: when, on what, by which command, and under what load, then the table."""
    shared = max(loads) > BUSY_LOAD
    notes = [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{command_line()}`" + (" (`--quick`: smoke run, too few steps to trust)" if quick else ""),
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads "
        f"on {os.cpu_count()} CPUs, no GPU; peak taken as {peak_gflops:g} GFLOP/s fp32",
        f"- 1-minute load average before / after: {loads[0]:.2f} / {loads[1]:.2f}"
        + (" -- taken on a shared machine with other jobs running; treat the speeds as lower bounds" if shared else ""),
        "- models built with `num_classes=2, in_channels=1`, random weights, at each spec's input size",
        "- GFLOPs: forward of one image by `torch.utils.flop_counter.FlopCounterMode` (conv and matmul only; "
        "FLOPs = 2 x MACs)",
        "- train: forward + backward + Adam step, cross-entropy; inference: eval mode, `torch.inference_mode`; "
        "channels_last ratio = channels_last img/s / default (NCHW) img/s",
    ]
    return "# Registry models on CPU\n\n" + "\n".join(notes) + "\n\n" + table + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated model names (default: every registry model)")
    parser.add_argument("--quick", action="store_true", help="one warm-up and one timed step each: a smoke run")
    parser.add_argument(
        "--output", type=Path, help=f"Markdown file to write (default: {RESULTS}, or none with --quick)"
    )
    parser.add_argument("--peak-gflops", type=float, default=PEAK_GFLOPS, help="CPU fp32 peak, GFLOP/s")
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else [spec.name for spec in list_models()]
    try:
        for name in names:
            get_spec(name)
    except ConfigError as error:
        parser.error(str(error))

    timing = QUICK if args.quick else FULL
    load_before = os.getloadavg()[0]
    results = []
    for name in names:
        start = time.perf_counter()
        results.append(benchmark_in_fresh_process(name, timing))
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    text = report(markdown_table(results, args.peak_gflops), (load_before, os.getloadavg()[0]), args.peak_gflops,
                  args.quick)
    print(text)
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
