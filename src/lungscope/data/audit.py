"""The dataset audit: what a user runs first on a new collection of X-rays."""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

from lungscope.data.datasets import scan_dataset
from lungscope.data.io import UNOPENABLE, read_image, verify_image
from lungscope.data.plausibility import check_header
from lungscope.errors import ImageReadError
from lungscope.progress import progress_bar
from lungscope.text import format_table

_HASH_CHUNK = 1 << 20


def _check(path: str) -> tuple[str, str | None, str | None]:
    """(path, "WxH|MODE" or None, error or None) for one file; never raises for a bad file. Beyond the integrity
    check, the decoded image must be a usable chest X-ray with finite values, and a DICOM file's header must not say
    it is another modality, view or body part, as predict requires (predict's orientation check is not run here)."""
    try:
        info = verify_image(path)
        check_header(path, read_image(path).meta)
    except ImageReadError as error:
        return path, None, error.reason
    return path, f"{info.width}x{info.height}|{info.mode}", None


def _digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def find_duplicates(paths: Iterable[str]) -> list[list[str]]:
    """Groups of byte-identical files. Only files of equal size are hashed, so a clean set costs one ``stat`` each."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for path in paths:
        by_size[os.path.getsize(path)].append(path)
    by_digest: dict[str, list[str]] = defaultdict(list)
    for group in by_size.values():
        if len(group) > 1:
            for path in group:
                by_digest[_digest(path)].append(path)
    return sorted(sorted(group) for group in by_digest.values() if len(group) > 1)


def _split_summary(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "n_images": len(frame),
        "n_patients": int(frame["patient_id"].nunique()),
        "classes": {str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()},
    }


def audit_dataset(
    source: str | os.PathLike[str],
    *,
    labels: str = "binary",
    workers: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Audit a folder or CSV manifest of X-rays.

    Returns a JSON-ready dict with ``n_images``, ``splits`` (per split: ``n_images``, ``n_patients``, ``classes``),
    ``unreadable`` (files that cannot be opened or decoded, or are not a usable chest X-ray, and folders that cannot
    be listed), ``duplicates`` (groups of byte-identical files), ``leaked_patients`` (patients in more than one
    split), ``sizes`` (``"WxH"`` counts), ``modes``, plus ``source``, ``labels``, ``n_patients``, ``imbalance``
    (largest over smallest class per split), ``skipped`` (e.g. symlinks out of the tree) and ``seconds``.
    A bad file never stops the audit: it lands in ``unreadable``.
    """
    started = time.perf_counter()
    frame, skipped = scan_dataset(source, labels=labels, strict=False, with_skipped=True)
    paths = frame["path"].astype(str).tolist()

    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    unreadable = [entry for entry in skipped if entry["error"].startswith(UNOPENABLE)]
    skipped = [entry for entry in skipped if entry not in unreadable]
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        checks = pool.map(_check, paths, chunksize=16)
        bar = progress_bar(checks, total=len(paths), desc="audit", unit="img", show=progress)
        for path, size_mode, error in bar:
            if error is not None:
                unreadable.append({"path": path, "error": error})
            else:
                size, mode = size_mode.split("|")
                sizes[size] += 1
                modes[mode] += 1

    splits_of_patient = frame.groupby("patient_id")["split"].unique()
    leaked = splits_of_patient[splits_of_patient.map(len) > 1].index
    leaked_patients = {
        str(pid): sorted(frame.loc[frame["patient_id"] == pid, "path"].astype(str)) for pid in sorted(leaked)
    }
    splits = {str(name): _split_summary(part) for name, part in frame.groupby("split", sort=True)}
    imbalance = {
        name: round(max(s["classes"].values()) / min(s["classes"].values()), 3)
        for name, s in splits.items()
        if s["classes"]
    }
    return {
        "source": str(source),
        "labels": labels,
        "n_images": len(paths),
        "n_patients": int(frame["patient_id"].nunique()),
        "splits": splits,
        "imbalance": imbalance,
        "unreadable": unreadable,
        "duplicates": find_duplicates(paths),
        "leaked_patients": leaked_patients,
        "sizes": dict(sizes.most_common()),
        "modes": dict(modes.most_common()),
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _listing(title: str, items: list[str], limit: int = 10) -> list[str]:
    lines = [f"{title}: {len(items)}"]
    lines += [f"  {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more (see --json)")
    return lines


def format_audit(report: dict[str, Any]) -> str:
    """A readable terminal summary of :func:`audit_dataset`'s report."""
    classes = sorted({c for s in report["splits"].values() for c in s["classes"]})
    rows = [["split", "images", "patients", *classes, "imbalance"]]
    for name, s in report["splits"].items():
        counts = [f"{s['classes'].get(c, 0):,}" for c in classes]
        rows.append([name, f"{s['n_images']:,}", f"{s['n_patients']:,}", *counts,
                     f"{report['imbalance'].get(name, 0):.2f}:1"])
    lines = [
        f"{report['source']}: {report['n_images']:,} images of {report['n_patients']:,} patients "
        f"(labels: {report['labels']}, {report['seconds']:.1f} s)",
        "",
        format_table(rows, right=range(1, len(rows[0])), indent="  "),
        "",
        "sizes: " + ", ".join(f"{k} ({v:,})" for k, v in list(report["sizes"].items())[:5])
        + (f", ... {len(report['sizes']) - 5} more" if len(report["sizes"]) > 5 else ""),
        "modes: " + ", ".join(f"{k} ({v:,})" for k, v in report["modes"].items()),
    ]
    lines += _listing("unreadable", [f"{u['path']}: {u['error']}" for u in report["unreadable"]])
    lines += _listing("duplicate groups (byte-identical)", [" = ".join(group) for group in report["duplicates"]])
    lines += _listing(
        "patients in more than one split (leakage)",
        [f"{pid}: {len(paths)} images" for pid, paths in report["leaked_patients"].items()],
    )
    if report["skipped"]:
        lines += _listing("skipped", [f"{s['path']}: {s['error']}" for s in report["skipped"]])
    return "\n".join(lines)
