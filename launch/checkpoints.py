"""Which checkpoint a restarted job resumes from: the newest one that loads, and on several
nodes the one the first node chose."""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

RESUME_KEY = "condense/resume"
# The first node's store must outlive every other process's look at it: kept for the process.
_served: list = []


class CheckpointNotShared(RuntimeError):
    """A node cannot read the checkpoint the first node resumes from."""


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


def agree_with_first_node(
    newest: Checkpoint | None,
    *,
    first: bool,
    host: str,
    port: int,
    node_rank: int,
    wait_s: float = 600.0,
    poll_s: float = 5.0,
    connect_timeout: timedelta = timedelta(minutes=30),
) -> Checkpoint | None:
    """The checkpoint every process of a multi-node job resumes from: the first process's
    `newest`, handed to the others through a key-value store it serves at host:port.

    Each node chooses on its own view of the checkpoint storage, and those views can differ
    (a bucket mount that uploads in the background, a folder on each node's own disk). Had
    each process kept its own choice, one starting fresh would run the initial validation
    while the others trained, and their collectives would never match: the job hangs. A
    process other than the first waits up to `wait_s` for the chosen file to reach it at
    the chosen step (last.ckpt is rewritten under the same name), and raises
    CheckpointNotShared when it does not.
    """
    from torch.distributed import TCPStore

    if first:
        store = TCPStore(host, port, is_master=True, timeout=connect_timeout)
        _served.append(store)
        chosen = {"path": str(newest.path), "global_step": newest.global_step} if newest else {}
        store.set(RESUME_KEY, json.dumps(chosen))
        return newest
    store = TCPStore(host, port, is_master=False, timeout=connect_timeout)
    chosen = json.loads(store.get(RESUME_KEY))
    if not chosen:
        return None
    wanted = Checkpoint(Path(chosen["path"]), int(chosen["global_step"]))
    deadline = time.monotonic() + wait_s
    while read_checkpoint(wanted.path) != wanted:
        if time.monotonic() > deadline:
            raise CheckpointNotShared(
                f"node {node_rank} cannot read {wanted.path} at global step"
                f" {wanted.global_step}, the checkpoint the first node resumes from, after"
                f" {wait_s:.0f} s: every node must mount the same --checkpoint-dir"
            )
        time.sleep(poll_s)
    return wanted
