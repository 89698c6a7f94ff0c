"""Data-parallel training under ``torchrun``: the process group, each process's share of every batch, a loss whose
averaged gradient is the single-process one, and broadcasting rank 0's decisions.

``torchrun --nproc-per-node N -m lungscope.cli train ...`` starts N processes (ranks) that train one model with
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on the CPU, NCCL on CUDA, one GPU per process).
``batch_size`` stays the global batch: every rank draws the same seeded permutation of the training images and
trains on its share of each batch (``batch[rank::N]``), and the gradients are averaged, so each step sees the same
images and the same gradient as a single process would, up to floating-point order. Two things differ:
augmentation and dropout draw from a random stream per rank, and BatchNorm normalises with its share's statistics
on the CPU (:class:`~torch.nn.SyncBatchNorm` works on CUDA only; there the statistics are the global batch's).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from lungscope.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Rank:
    """This process's place in the job: ``rank`` of ``world_size`` processes (0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Rank()


def is_main_process() -> bool:
    """Whether this process is rank 0 of its torchrun job (or runs alone), from torchrun's ``RANK``."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[Rank, torch.device]]:
    """This process's :class:`Rank` and device for the block: under torchrun (``WORLD_SIZE`` > 1 in the environment)
    it joins the job's process group (gloo on the CPU; NCCL on CUDA, on the GPU of ``LOCAL_RANK``) and leaves it
    afterwards, also on error; a group already set up by the caller is used and kept. Otherwise a single process."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield SINGLE, device
        return
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"distributed training runs on the CPU (gloo) or CUDA (nccl), not {device.type}")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        dist.barrier()  # every process has read its options and checked the run folder before rank 0 writes there
        yield Rank(dist.get_rank(), dist.get_world_size()), device
    finally:
        if owned:
            dist.destroy_process_group()


def broadcast(value: T | None, rank: Rank) -> T:
    """``value`` as rank 0 has it, on every rank (pickled: for small objects such as metrics or a summary); the
    other ranks may pass None."""
    if not rank.distributed:
        return cast(T, value)  # a single process is rank 0
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return cast(T, box[0])


def sum_over_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    """Each of ``values`` summed over every rank (in float64); the values themselves in a single process."""
    if not dist.is_initialized():
        return list(values)
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def gather_rows(rows: np.ndarray) -> np.ndarray:
    """Every rank's ``rows`` concatenated in rank order (pickled: for per-image scores); ``rows`` in one process."""
    if not dist.is_initialized():
        return rows
    parts: list[np.ndarray | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return np.concatenate(cast(list[np.ndarray], parts))  # all_gather_object filled every slot


def rank_seed(seed: int, rank: Rank) -> int:
    """The seed of this rank's own random stream (augmentation, dropout): ``seed`` itself on rank 0, as in a single
    process, and an independent one on every other rank, so no two ranks draw the same augmentation."""
    return seed if rank.rank == 0 else int(np.random.SeedSequence([seed % 2**64, rank.rank]).generate_state(1)[0])


def reseed_worker(worker_id: int, rank: Rank) -> None:
    """A DataLoader ``worker_init_fn``: the worker's own stream made this rank's (workers are seeded from the batch
    order's generator, the same on every rank, and would otherwise augment every rank's images alike)."""
    torch.manual_seed(rank_seed(torch.initial_seed(), rank))


class ShardedBatches(Sampler[list[int]]):
    """This rank's share ``batch[rank::world_size]`` of every batch of ``batches`` (e.g. a seeded
    :class:`~torch.utils.data.BatchSampler` that draws the same batches on every rank): the shares of a batch are
    disjoint, make up the whole batch and differ in size by at most one image."""

    def __init__(self, batches: Sampler[list[int]], rank: Rank) -> None:
        if not isinstance(batches, Sized):
            raise TypeError("batches must have a length: every rank must run the same number of steps")
        self.batches, self.rank = batches, rank

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.rank.rank :: self.rank.world_size]

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


class GlobalBatchCrossEntropy(nn.Module):
    """Cross-entropy of the global batch (every rank's share), class-weighted like :class:`~torch.nn.CrossEntropyLoss`,
    whose ``mean`` divides by the summed weights of the targets: here the global sum, whatever the shares hold.

    Every rank gets the global batch's loss as the value, and ``world_size`` times its own share's part of it as the
    gradient, which DistributedDataParallel's averaging over the ranks turns into the global batch's gradient.
    """

    def __init__(self, world_size: int, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.world_size, self.label_smoothing = world_size, label_smoothing
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        local = nn.functional.cross_entropy(logits, targets, weight=self.weight, reduction="sum",
                                            label_smoothing=self.label_smoothing)
        weights = self.weight[targets].sum() if self.weight is not None else targets.new_tensor(len(targets))
        totals = torch.stack([local.detach().float(), weights.float()])
        dist.all_reduce(totals)  # the global batch's summed loss and summed weight
        share = local * self.world_size
        return (share + (totals[0] - share.detach())) / totals[1]


def data_parallel(model: nn.Module, rank: Rank, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed (rebuild it when parameters are frozen or thawed: it
    averages the gradients of the parameters that required them when it was built), else ``model`` itself."""
    if not rank.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_batchnorm(model: nn.Module, rank: Rank, device: torch.device) -> nn.Module:
    """On CUDA with several ranks, ``model`` with SyncBatchNorm (the global batch's statistics); else unchanged."""
    if rank.distributed and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
