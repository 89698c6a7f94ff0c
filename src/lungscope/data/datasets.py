"""Finding and labelling the X-rays of a data set, and serving them to torch.

:func:`scan_dataset` understands four layouts of a source (the label scheme is ``binary``, ``three-class`` or ``tb``):

(a) a folder with class folders (``NORMAL/``, ``PNEUMONIA/``, ...): split = the folder's own name;
(b) a folder of split folders (``train/``, ``val/``, any name) each holding class folders, as Kaggle ships it:
    split = the class folder's parent;
(c) a flat folder whose file names carry the label (``lung_masks/images`` with ``tb``): split = the folder's name;
(d) a CSV manifest ``path,label[,patient_id][,split]``: relative paths are resolved against the CSV's folder; a
    missing split is the CSV's stem.

In a folder, an image's class folder is the deepest folder above it named like a class of any scheme (NORMAL,
PNEUMONIA, BACTERIA, VIRUS, TUBERCULOSIS; any case); the class comes from it if it is a class of the scheme asked
for, else from the file name (:func:`~lungscope.data.labels.label_for`). The patient is parsed from the file name;
a name that carries none (not a Kermany or Montgomery/Shenzhen name) is taken as its own patient under its file
stem: one image, one patient. Files with the same stem are then one patient, which errs on the safe side
(never splits a true patient across train and test).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, cast, overload

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lungscope.data.io import (
    IMAGE_SUFFIXES,
    entry_problem,
    is_image_candidate,
    named_like_image,
    read_image,
)
from lungscope.data.labels import (
    CLASS_NAMES,
    canonical_label,
    classes_for,
    label_for,
    patient_id,
)
from lungscope.data.splits import load_manifest
from lungscope.errors import DatasetError

Skipped = list[dict[str, str]]

_EXAMPLES = 3  # files named in an error message


def _ignored(name: str) -> bool:
    """Hidden entries and the ``__MACOSX`` folders that macOS puts in zip files (their ``._*.jpeg`` are not images)."""
    return name.startswith(".") or name == "__MACOSX"


def _outside(link: Path, tree: Path) -> str | None:
    """Why a symlink is not followed because its target lies outside ``tree``, or None."""
    target = Path(os.path.realpath(link))  # unlike Path.resolve() on Python 3.11, no RuntimeError on a loop
    return None if target.is_relative_to(tree) else f"symlink points outside {tree} (to {target}): not followed"


def find_images(root: str | os.PathLike[str]) -> tuple[list[Path], Skipped]:
    """Every image file below ``root`` (by :func:`~lungscope.data.io.is_image_candidate`), sorted, and what was skipped.

    The one folder walker of lungscope (predict, explain, segment, audit and the data sets use it). Hidden entries
    and ``__MACOSX`` folders are ignored. A symlink is followed only to a file inside ``root``; one pointing outside
    ``root`` (file or folder) is skipped. Links to folders inside ``root`` are not entered (their targets are scanned
    anyway), and a folder is entered once (by device and inode), so no link or mount loop can recurse. Skipped, as
    ``{"path": ..., "error": ...}``: those links, folders that cannot be listed ("permission denied"), and entries
    named like images that cannot be opened (broken symlink, symlink loop, a FIFO, socket or device: never opened).
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    tree = root.resolve()
    images: list[Path] = []
    skipped: Skipped = []
    visited: set[tuple[int, int]] = set()
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            status = folder.stat()
            if (status.st_dev, status.st_ino) in visited:
                continue
            visited.add((status.st_dev, status.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            reason = "permission denied" if isinstance(exc, PermissionError) else f"cannot open: {exc.strerror or exc}"
            skipped.append({"path": str(folder), "error": f"{reason}: the folder cannot be listed"})
            continue
        for entry in entries:
            path = Path(entry.path)
            if _ignored(entry.name):
                continue
            if entry.is_symlink() and (problem := _outside(path, tree)):
                skipped.append({"path": str(path), "error": problem})
            elif os.path.isdir(path):  # os.path, unlike DirEntry, answers False for a symlink loop
                if not entry.is_symlink():
                    folders.append(path)
            elif not os.path.isfile(path):  # broken link, link loop, FIFO, socket, device: reported, never opened
                if named_like_image(path):
                    skipped.append({"path": str(path), "error": entry_problem(path) or "not a regular file"})
            elif is_image_candidate(path):
                images.append(path)
    return sorted(images), sorted(skipped, key=lambda s: s["path"])


def collect_inputs(items: Sequence[str | os.PathLike[str]]) -> tuple[list[str], list[dict[str, str]]]:
    """Expand files, folders (recursively, DICOM without extension included) and glob patterns, in the order given.

    Returns the files and ``{"path", "error"}`` for each item that named nothing readable (a missing path, a broken
    symlink, a FIFO or device (never opened), an empty folder or glob, what the folder walker
    :func:`find_images` skipped), so the run can report them and go on.
    """
    files: list[str] = []
    problems: list[dict[str, str]] = []

    def add_file(name: str) -> None:
        if (problem := entry_problem(name)) is None:
            files.append(name)
        else:
            problems.append({"path": name, "error": problem})

    for item in map(str, items):
        path = Path(item)
        if path.is_dir():
            found, skipped = find_images(path)
            problems += skipped
            if not found:
                problems.append({"path": item, "error": "no images found in this folder"})
            files += [str(p) for p in found]
        elif os.path.lexists(item) or not glob.has_magic(item):
            add_file(item)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                problems.append({"path": item, "error": "the pattern matches no file"})
            for match in matches:
                if not os.path.isdir(match):
                    add_file(match)
    return list(dict.fromkeys(files)), problems  # each file once, first position kept


def _class_folder(folders: Sequence[str]) -> int | None:
    """Index of the deepest folder named like a class of any scheme, or None."""
    for index in range(len(folders) - 1, -1, -1):
        if folders[index].upper() in CLASS_NAMES:
            return index
    return None


def _problems(source: Path, problems: Skipped, total: int, what: str, strict: bool) -> Skipped:
    """Raise DatasetError naming a few of the unusable files when strict; else return them for the report."""
    if problems and strict:
        examples = ", ".join(p["path"] for p in problems[:_EXAMPLES])
        raise DatasetError(f"{source}: {len(problems)} of {total} files {what}, e.g. {examples}")
    return problems


def _frame(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["path", "label", "patient_id", "split"], dtype=object)


def _scan_folder(root: Path, scheme: str, strict: bool) -> tuple[pd.DataFrame, Skipped]:
    paths, skipped = find_images(root)
    if not paths:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DatasetError(f"{root}: no images found (files ending {suffixes}, or DICOM without a suffix)")
    root = root.absolute()
    no_label = f"no {scheme} label: neither a class folder ({', '.join(classes_for(scheme))}) nor the file name tells"
    rows, unlabelled = [], []
    for path in paths:
        folders = path.relative_to(root).parts[:-1]
        at = _class_folder(folders)
        label = label_for(path, scheme, None if at is None else folders[at])
        if label is None:
            unlabelled.append({"path": str(path), "error": no_label})
            continue
        split = folders[at - 1] if at is not None and at > 0 else root.name
        rows.append((str(path), label, patient_id(path) or path.stem, split))
    return _frame(rows), skipped + _problems(root, unlabelled, len(paths), f"have {no_label}", strict)


def _scan_manifest(csv: Path, scheme: str, strict: bool) -> tuple[pd.DataFrame, Skipped]:
    table = load_manifest(csv, required=("path", "label"))
    if table.empty:
        raise DatasetError(f"{csv}: the manifest has no rows")
    labels = [canonical_label(value, scheme) for value in table["label"]]
    if bad := [i for i, label in enumerate(labels) if label is None]:
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise DatasetError(
            f"{csv}: line {bad[0] + 2}: unknown label {table['label'].iloc[bad[0]]!r}{more}; "
            f"valid {scheme} classes: {', '.join(classes_for(scheme))}"
        )
    patients = table["patient_id"] if "patient_id" in table.columns else [""] * len(table)
    splits = table["split"] if "split" in table.columns else [""] * len(table)
    rows, missing = [], []
    for path, label, patient, split in zip(table["path"], labels, patients, splits):
        if not os.path.isfile(path):
            missing.append({"path": path, "error": "file not found"})
            continue
        label = cast(str, label)  # unknown labels were refused above
        rows.append((path, label, patient or patient_id(path) or Path(path).stem, split or csv.stem))
    return _frame(rows), _problems(csv, missing, len(table), "listed do not exist", strict)


@overload
def scan_dataset(
    source: str | os.PathLike[str], labels: str = ..., *, strict: bool = ..., with_skipped: Literal[False] = ...
) -> pd.DataFrame: ...
@overload
def scan_dataset(
    source: str | os.PathLike[str], labels: str = ..., *, strict: bool = ..., with_skipped: Literal[True]
) -> tuple[pd.DataFrame, Skipped]: ...
def scan_dataset(
    source: str | os.PathLike[str], labels: str = "binary", *, strict: bool = True, with_skipped: bool = False
) -> pd.DataFrame | tuple[pd.DataFrame, Skipped]:
    """The images of a folder or CSV manifest (see the module docstring) as a frame: path, label, patient_id, split.

    No image is decoded. Raises ConfigError for an unknown scheme and DatasetError for a missing source, a folder
    without images, a manifest without ``path``/``label`` columns or with a label outside the scheme, and when no
    file is left. Files that cannot be used (no label from folder or name; a manifest row whose file is missing)
    raise DatasetError naming a few when ``strict``; otherwise they are left out and, like symlinks pointing
    outside the folder (always skipped), returned as ``{"path", "error"}`` dicts when ``with_skipped``.
    """
    classes_for(labels)
    source = Path(os.path.abspath(source))  # absolute and without "..", but symlinks kept as the user named them
    if source.is_dir():
        frame, skipped = _scan_folder(source, labels, strict)
    elif source.is_file() and source.suffix.lower() == ".csv":
        frame, skipped = _scan_manifest(source, labels, strict)
    elif source.exists():
        raise DatasetError(f"{source}: neither a folder nor a CSV manifest (.csv)")
    else:
        raise DatasetError(f"{source}: no such folder or CSV manifest")
    if frame.empty:
        example = skipped[-1]  # the unusable files come after the symlinks
        raise DatasetError(
            f"{source}: no usable images for the {labels} labels, e.g. {example['path']}: {example['error']}"
        )
    return (frame, skipped) if with_skipped else frame


class XRayDataset(Dataset[tuple[torch.Tensor, int]]):
    """The images of a frame (columns ``path``, ``label``) as ``(tensor, class index)`` pairs, read on access.

    Without ``transform`` the tensor is the ``(1, H, W)`` float32 image in [0, 1]; with one, ``transform(pixels)``
    of the 2-D array. ``targets`` holds every class index (for samplers and class weights).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        classes: Sequence[str],
        transform: Callable[[np.ndarray], torch.Tensor] | None = None,
    ) -> None:
        if missing := [c for c in ("path", "label") if c not in frame.columns]:
            raise DatasetError(f"dataset frame lacks column(s) {', '.join(missing)}")
        self.classes = tuple(classes)
        index = {name: i for i, name in enumerate(self.classes)}
        if unknown := sorted(set(frame["label"]) - set(index), key=str):
            names = ", ".join(map(repr, unknown))
            raise DatasetError(f"label(s) {names} not among the classes {', '.join(self.classes)}")
        # Plain lists, not the frame: cheap to index and to copy into DataLoader workers.
        self.paths: list[str] = frame["path"].astype(str).tolist()
        self.targets: list[int] = [index[label] for label in frame["label"]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = read_image(self.paths[i]).pixels
        image = torch.from_numpy(pixels)[None] if self.transform is None else self.transform(pixels)
        return image, self.targets[i]
