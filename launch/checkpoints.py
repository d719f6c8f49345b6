"""Where a restarted job stands: the newest checkpoint that loads, whether its training has
already finished, and on several nodes what the first node saw."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

RESUME_KEY = "condense/resume"
SEEN_KEY = "condense/seen"  # how many other processes have read the first one's choice
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
    its small bookkeeping. Tensors and plain values only, as training itself reads it: a
    file in a shared bucket runs no code here."""
    from condense.run_dir import read_checkpoint, step_of

    # A cut-short zip, a stray file, a dict without the step: each is skipped.
    step = step_of(read_checkpoint(path))
    return None if step is None else Checkpoint(Path(path), step)


@dataclass(frozen=True)
class RunState:
    """What a restarted job finds in its run dir: the newest checkpoint that loads, and the
    steps summary.json says training ran (written when a run ends; None without one)."""

    checkpoint: Checkpoint | None
    summary_steps: int | None = None

    def finished(self, max_steps: int) -> bool:
        """Whether the run has trained to max_steps and written its summary: nothing to
        train (condense.run_dir.is_finished, the rule training applies by itself)."""
        from condense.run_dir import is_finished

        ckpt = self.checkpoint
        return ckpt is not None and is_finished(self.summary_steps, ckpt.global_step, max_steps)


def read_run_state(run_dir: Path) -> RunState:
    """The RunState of run_dir as this node sees it."""
    from condense.run_dir import read_summary

    summary = read_summary(run_dir) or {}
    steps = summary.get("steps")
    newest = newest_valid_checkpoint(Path(run_dir) / "checkpoints")
    return RunState(newest, steps if isinstance(steps, int) else None)


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
    seen: RunState,
    *,
    first: bool,
    host: str,
    port: int,
    node_rank: int,
    wait_s: float = 600.0,
    poll_s: float = 5.0,
    connect_timeout: timedelta = timedelta(minutes=30),
) -> RunState:
    """The state every process of a multi-node job acts on: what the first process `seen`,
    handed to the others through a key-value store it serves at host:port.

    Each node looks at its own view of the run dir, and those views can differ (a bucket
    mount that uploads in the background, a folder on each node's own disk). Had each
    process acted on its own view, one starting fresh would run the initial validation
    while the others trained, or one seeing the finished run's summary would exit while the
    others waited for it in training: either way the job hangs. A process other than the
    first waits up to `wait_s` for the chosen checkpoint to reach it at the chosen step
    (last.ckpt is rewritten under the same name), and raises CheckpointNotShared when it
    does not.
    """
    from torch.distributed import TCPStore

    if first:
        store = TCPStore(host, port, is_master=True, timeout=connect_timeout)
        _served.append(store)
        store.set(RESUME_KEY, json.dumps(_as_dict(seen)))
        return seen
    store = TCPStore(host, port, is_master=False, timeout=connect_timeout)
    chosen = _from_dict(json.loads(store.get(RESUME_KEY)))
    store.add(SEEN_KEY, 1)
    wanted = chosen.checkpoint
    deadline = time.monotonic() + wait_s
    while wanted is not None and read_checkpoint(wanted.path) != wanted:
        if time.monotonic() > deadline:
            raise CheckpointNotShared(
                f"node {node_rank} cannot read {wanted.path} at global step"
                f" {wanted.global_step}, the checkpoint the first node resumes from, after"
                f" {wait_s:.0f} s: every node must mount the same --checkpoint-dir"
            )
        time.sleep(poll_s)
    return chosen


def wait_until_seen(others: int, wait_s: float = 600.0, poll_s: float = 0.5) -> bool:
    """On the first process, after agree_with_first_node: wait up to `wait_s` until
    `others` processes have read its choice, and say whether they did. A finished run's
    first process has nothing else to wait for; leaving at once would take its store
    along, and a node that starts later would wait 30 minutes to reach it, then fail."""
    store = _served[-1]
    deadline = time.monotonic() + wait_s
    while store.add(SEEN_KEY, 0) < others:
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def _as_dict(state: RunState) -> dict:
    ckpt = state.checkpoint
    return {
        "path": str(ckpt.path) if ckpt else None,
        "global_step": ckpt.global_step if ckpt else None,
        "summary_steps": state.summary_steps,
    }


def _from_dict(served: dict) -> RunState:
    if served["path"] is None:
        return RunState(None, served["summary_steps"])
    ckpt = Checkpoint(Path(served["path"]), int(served["global_step"]))
    return RunState(ckpt, served["summary_steps"])
