"""Data-parallel training: each rank's share of every batch, the global-batch loss, and a two-process torchrun run
on a slice of the real pneumonia set that trains the same weights as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, RandomSampler

import lungscope
from lungscope.cli import main
from lungscope.errors import ConfigError
from lungscope.training import TrainConfig, Trainer
from lungscope.training.data import AugmentedImages
from lungscope.training.distributed import (
    SINGLE,
    GlobalBatchCrossEntropy,
    Rank,
    ShardedBatches,
    rank_seed,
)

SRC = Path(lungscope.__file__).resolve().parents[1]


@pytest.mark.parametrize("world", [2, 3])
def test_shares_make_up_each_batch(world: int) -> None:
    def batches() -> BatchSampler:  # the same seeded order on every rank, as the trainer draws it
        return BatchSampler(RandomSampler(range(23), generator=torch.Generator().manual_seed(5)), 7, drop_last=False)

    whole = list(batches())
    shares = [list(ShardedBatches(batches(), Rank(rank, world))) for rank in range(world)]
    assert [len(share) for share in shares] == [len(whole)] * world  # every rank takes the same number of steps
    for step, batch in enumerate(whole):
        parts = [share[step] for share in shares]
        assert sorted(index for part in parts for index in part) == sorted(batch)  # disjoint, together the batch
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shares[0][0] == whole[0][0::world]


def _epoch(data: AugmentedImages, rank: Rank, out: Path, **options: object) -> list[torch.Tensor]:
    """One epoch of the trainer's training batches on ``rank``, seeded as the trainer seeds it (alike on every rank)."""
    trainer = Trainer(TrainConfig.from_dict({"out": str(out), **options}), progress=False)
    trainer.rank = rank
    generator = torch.Generator()
    loader = trainer._train_loader(data, RandomSampler(data, generator=generator), generator)
    generator.manual_seed(7)
    return [images.flatten() for images, _ in loader]


def test_trainer_gives_each_rank_its_share_of_the_same_batches(tmp_path: Path) -> None:
    images = torch.arange(10, dtype=torch.float16).reshape(10, 1, 1, 1)  # image i holds the value i
    data = AugmentedImages(images, [i % 2 for i in range(10)], transform=lambda x: x)

    def steps(rank: Rank, batch_size: int = 4) -> list[list[int]]:
        return [batch.int().tolist() for batch in _epoch(data, rank, tmp_path / "run", batch_size=batch_size)]

    single, first, second = steps(SINGLE), steps(Rank(0, 2)), steps(Rank(1, 2))
    assert len(single) == len(first) == len(second) == 2  # 10 images, batches of 4, the partial one dropped
    for whole, a, b in zip(single, first, second, strict=True):
        assert (a, b) == (whole[0::2], whole[1::2])
    with pytest.raises(ConfigError, match="batch of 3 image.* cannot be shared by 4 processes"):
        steps(Rank(0, 4), batch_size=3)
    assert rank_seed(11, Rank(0, 2)) == 11 and rank_seed(11, Rank(1, 2)) not in (11, rank_seed(11, Rank(2, 3)))


def _noise(image: torch.Tensor) -> torch.Tensor:
    return torch.rand(image.shape)  # stands for an augmentation's random draws


def test_loader_workers_draw_their_own_stream_on_each_rank(tmp_path: Path) -> None:
    data = AugmentedImages(torch.zeros(8, 1, 1, 1, dtype=torch.float16), [0, 1] * 4, transform=_noise)
    options = {"batch_size": 4, "workers": 1}
    single, first, second = (torch.cat(_epoch(data, rank, tmp_path / "run", **options))
                             for rank in (SINGLE, Rank(0, 2), Rank(1, 2)))
    assert torch.equal(first, single[:4])  # rank 0 keeps the single-process stream
    assert not torch.equal(first, second)  # rank 1 augments its share with a stream of its own
    assert torch.equal(second, torch.cat(_epoch(data, Rank(1, 2), tmp_path / "run", **options)))  # seeded


# Made-up batch: 9 images in 3 classes, class weights as --class-weights gives them; 2 ranks take 5 and 4 of them,
# each a different mix of classes, so the mean of the ranks' own weighted means is not the batch's weighted mean.
def _made_up() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    inputs = torch.randn(9, 4, generator=generator)
    targets = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2])
    return nn.Linear(4, 3), inputs, targets, torch.tensor([0.6, 1.5, 1.5])


def _loss_worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, inputs, targets, weight = _made_up()
        net = DistributedDataParallel(model)
        loss = GlobalBatchCrossEntropy(world, weight)(net(inputs[rank::world]), targets[rank::world])
        loss.backward()
        if rank == 0:
            torch.save({"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]}, out)
    finally:
        dist.destroy_process_group()


def test_global_batch_loss_gives_the_single_process_gradient(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_loss_worker, args=(world, str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=world)
    distributed = torch.load(tmp_path / "out.pt", weights_only=True)

    model, inputs, targets, weight = _made_up()
    loss = nn.CrossEntropyLoss(weight=weight)(model(inputs), targets)
    loss.backward()
    torch.testing.assert_close(distributed["loss"], loss.detach())
    for got, expected in zip(distributed["grads"], [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(got, expected)

    # What averaging each rank's own weighted mean would give is measurably different: the check above can fail.
    naive = []
    for rank in range(world):
        model.zero_grad()
        nn.CrossEntropyLoss(weight=weight)(model(inputs[rank::world]), targets[rank::world]).backward()
        naive.append(model.weight.grad.clone())
    assert not torch.allclose(torch.stack(naive).mean(0), distributed["grads"][0], rtol=1e-2, atol=1e-4)


# shallow-cnn has neither BatchNorm nor dropout, and augmentation is off: then nothing but the order of
# floating-point sums separates two processes from one. The batch of 15 splits 8 + 7, class weights are on, and the
# first epoch trains the head alone (the model is wrapped again for the second stage).
QUICK = {"model": "shallow-cnn", "image_size": 32, "augment": False, "epochs": 3, "batch_size": 15,
         "class_weights": True, "scheduler": "plateau", "plateau_patience": 0, "freeze_epochs": 1,
         "finetune_lr": 1e-3, "limit": 120, "seed": 2}


def test_two_processes_under_torchrun_train_what_one_process_trains(
    chest_xray: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump(QUICK))
    argv = ["train", "--config", str(config), "--data", str(chest_xray / "train"), "--out"]
    logs = tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "--log-dir", str(logs), "--redirects", "3", "-m", "lungscope.cli"]
    done = subprocess.run([*torchrun, *argv, str(tmp_path / "ddp")], env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    worker_logs = {p.parent.name + "/" + p.name: p.read_text() for p in logs.rglob("*.log")}
    assert done.returncode == 0, done.stderr + json.dumps(worker_logs, indent=1)
    assert main([*argv, str(tmp_path / "single")]) == 0
    capsys.readouterr()

    ddp, single = tmp_path / "ddp", tmp_path / "single"
    # Rank 0 alone prints the summary and writes the run folder: metrics.csv has one header and a row per epoch.
    assert json.loads(worker_logs["0/stdout.log"])["processes"] == 2
    assert worker_logs["1/stdout.log"] == ""
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    assert (ddp / "split.csv").read_bytes() == (single / "split.csv").read_bytes()
    metrics = pd.read_csv(ddp / "metrics.csv").drop(columns="seconds")
    expected = pd.read_csv(single / "metrics.csv").drop(columns="seconds")
    assert metrics["epoch"].tolist() == [1, 2, 3]
    # metrics.csv holds 6 significant digits: one unit in the last one is at most 1e-5 of the value.
    pd.testing.assert_frame_equal(metrics, expected, check_exact=False, rtol=2e-5, atol=0)

    # After 18 Adam steps at lr 1e-3 (each moves a weight by up to ~1e-3) the weights differ by float32 rounding
    # alone: up to 6e-8 on an AMD EPYC (Zen 3), up to 1.1e-6 on an Intel Xeon with AVX-512 (another summation order,
    # and Adam divides by sqrt(v) that rounding moves most for weights with small gradients). A wrong loss average
    # (each rank's own weighted mean instead of the global batch's) moved them by 3e-4 to 7e-3 (2 epochs). The
    # absolute tolerance 2e-5 sits between the two, ~18x the largest right gap and 15x below the smallest wrong one.
    best, best_single = (torch.load(run / "best.pt", weights_only=True) for run in (ddp, single))
    assert best["epoch"] == best_single["epoch"]
    assert best["model"].keys() == best_single["model"].keys()
    for name, weights in best["model"].items():
        torch.testing.assert_close(weights, best_single["model"][name], rtol=1e-5, atol=2e-5)
    summary, summary_single = (json.loads((run / "summary.json").read_text()) for run in (ddp, single))
    assert (summary["best_epoch"], summary["n_train"]) == (summary_single["best_epoch"], summary_single["n_train"])
    assert summary["threshold"] == pytest.approx(summary_single["threshold"], rel=1e-4)
