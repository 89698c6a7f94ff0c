"""Ensembles: a model registered with ``ensemble_of`` (``cxr-resnet-ensemble``) is trained as its members, each
an ordinary run of that network from its own seed on the same split, then joined into one network.

``RUN/members/k/`` is member k's run folder (seed ``seed + k``; member 0 makes the split, the others train on its
``split.csv``), ``RUN/best.pt`` the joined network with the operating point fitted on its own validation
probabilities, ``RUN/split.csv`` the split and ``RUN/summary.json`` the joined network's validation metrics beside
each member's best epoch. :func:`lungscope.training.train` runs the members (resuming where it stopped) and joins.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lungscope.checkpoint import BEST, load_checkpoint
from lungscope.data.splits import load_manifest
from lungscope.data.transforms import Preprocessing
from lungscope.device import select_device
from lungscope.errors import ConfigError
from lungscope.evaluation.operating import operating_point, store_operating_point
from lungscope.models import create_model, get_spec
from lungscope.training.config import TrainConfig
from lungscope.training.engine import predict_files, validation_metrics
from lungscope.training.run_folder import RunFolder

MEMBERS = "members"  # RUN/members/k: member k's run folder


@runtime_checkable
class Joins(Protocol):
    """What an ensemble network has: a way to take its trained members' state dicts."""

    def load_members(self, states: list[dict[str, torch.Tensor]]) -> None: ...


def member_configs(config: TrainConfig) -> list[TrainConfig]:
    """The run of each member of the ensemble ``config.model``: its network with the same options (``members``
    aside), seed ``config.seed + k``, in ``RUN/members/k``, on member 0's split."""
    spec = get_spec(config.model)
    if spec.ensemble_of is None:
        raise ValueError(f"{config.model} is not an ensemble")
    with torch.device("meta"):  # the builder checks the options (members >= 2 among them); no weights allocated
        create_model(config.model, **config.model_options)
    options = dict(config.model_options)
    count = options.pop("members", inspect.signature(spec.builder).parameters["members"].default)
    runs = [Path(config.out) / MEMBERS / str(k) for k in range(count)]
    return [dataclasses.replace(config, model=spec.ensemble_of, model_options=options, seed=config.seed + k,
                                out=str(run), manifest=config.manifest if k == 0 else str(runs[0] / "split.csv"))
            for k, run in enumerate(runs)]


def start(config: TrainConfig, *, resume: bool) -> RunFolder:
    """The ensemble's run folder with its ``config.yaml``: new, or (``resume``) the one holding its members."""
    folder = RunFolder(config.out)  # refuses a folder that holds a finished run
    members = folder.path / MEMBERS
    if resume and not members.is_dir():
        raise ConfigError(f"{folder.path}: nothing to resume (no {MEMBERS}/)")
    if not resume and members.exists():
        raise ConfigError(f"{folder.path} already holds an ensemble's members; pass --resume to continue it or "
                          "choose another --out")
    folder.create(config.to_dict())
    return folder


def join_members(config: TrainConfig, *, progress: bool | None = None) -> dict[str, Any]:
    """Join the trained members into ``RUN/best.pt``, fit its operating point on the validation split and write
    ``summary.json``; returns the summary."""
    folder, members = RunFolder(config.out), member_configs(config)
    states = [load_checkpoint(Path(member.out) / BEST, kind="classifier") for member in members]
    classes = states[0]["classes"]
    model = create_model(config.model, num_classes=len(classes), **config.model_options)
    if not isinstance(model, Joins):
        raise TypeError(f"{config.model} is registered as an ensemble but has no load_members")
    model.load_members([state["model"] for state in states])
    shutil.copyfile(Path(members[0].out) / "split.csv", folder.path / "split.csv")
    frame = load_manifest(folder.path / "split.csv")
    val = frame[frame["split"] == "val"].reset_index(drop=True)
    preprocessing = Preprocessing.of_checkpoint(states[0])
    probabilities, kept = predict_files(model, preprocessing, val["path"].tolist(), select_device(config.device),
                                        show=progress, desc="score val")
    labels = np.array([classes.index(label) for label in val["label"].iloc[kept]])
    metrics = validation_metrics(probabilities, labels)
    folder.save_best({"model": model.state_dict(), "config": config.to_dict(), "classes": classes,
                      "image_size": states[0]["image_size"], "preprocessing": preprocessing.to_dict(),
                      "epoch": None, "metrics": metrics})
    point = operating_point(probabilities, labels, target_sensitivity=config.target_sensitivity,
                            calibration=config.calibration)
    store_operating_point(folder.path, point)
    summaries = [json.loads((Path(member.out) / "summary.json").read_text()) for member in members]
    summary = {
        "model": config.model, "members": [
            {"seed": member.seed, "best_epoch": s["best_epoch"], "best_val_auc": s["best_val_auc"],
             "wall_time_seconds": s["wall_time_seconds"]} for member, s in zip(members, summaries)],
        **metrics, "best_val_auc": metrics["val_auc"], "best_epoch": None,
        "wall_time_seconds": round(sum(s["wall_time_seconds"] for s in summaries), 1),
        "n_train": summaries[0]["n_train"], "n_val": len(kept), "device": summaries[0]["device"],
        "threshold": point["threshold_calibrated"], "temperature": point["temperature"],
    }
    folder.write_summary(summary)
    return summary
