"""Which checkpoint a restarted job resumes from: the newest one that loads."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Checkpoint:
    """A Lightning checkpoint file and the optimizer step it was saved at."""

    path: Path
    global_step: int


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`, or None when it does not load (cut short by a kill during
    an upload, say). Memory-mapped: the tensors are not read, only the file's index and
    its small bookkeeping."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return Checkpoint(Path(path), int(state["global_step"]))
    # A cut-short zip, a stray file, a dict without the step: each is skipped.
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError):
        return None


def newest_valid_checkpoint(folder: Path) -> Checkpoint | None:
    """The loadable *.ckpt in `folder` with the highest global step (the most recently
    written one among equals), or None when there is none."""
    files = sorted(Path(folder).glob("*.ckpt"), key=_written_at, reverse=True)
    valid = [c for c in map(read_checkpoint, files) if c is not None]
    # max() keeps the first of equals: the most recently written.
    return max(valid, key=lambda c: c.global_step, default=None)


def _written_at(path: Path) -> float:
    # A file moved or replaced between listing and looking (a fresh start setting an
    # earlier run aside, a save renaming into place) sorts last, and then fails to load.
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
