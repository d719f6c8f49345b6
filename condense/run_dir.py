"""The run folder: which one a run writes to, what it resumes from, and what becomes of an
earlier run's files when a run starts fresh in the same folder."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from condense.config import ConfigError, TrainConfig
from condense.files import ARTIFACT_CONFIG_FILE, write_atomic

RUN_DIR_ENV = "CONDENSE_RUN_DIR"
MOVING = ".moving"  # in an earlier-* folder while a run's files are being moved into it
# The checkpoint of another run that the run in a folder started from (`--resume PATH`).
STARTED_FROM = "started_from"

# What a run writes into its folder. W&B's offline wandb/ is left where it is: every start
# logs into a subfolder of its own there.
RUN_FILES = (
    "checkpoints",
    "artifact",
    "metrics.csv",
    "hparams.yaml",
    "config.yaml",
    "summary.json",
    "wandb_run_id",
    STARTED_FROM,
)


def resolve_run_dir(cfg: TrainConfig) -> Path:
    """`cfg.run_dir`, or a new runs/<name>-<time> folder, chosen once per run.

    The choice is kept in $CONDENSE_RUN_DIR, which the processes that Lightning starts for
    DDP inherit, so that all of them use the folder the first one chose. Processes started
    together by another launcher (torchrun) need an explicit `run_dir`.
    """
    if cfg.run_dir:
        return Path(cfg.run_dir)
    chosen = os.environ.get(RUN_DIR_ENV) or str(
        Path("runs") / f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    os.environ[RUN_DIR_ENV] = chosen
    return Path(chosen)


def launched_as_rank_zero() -> bool:
    """Whether this process is the job's global rank 0 as its launcher numbered it, before
    Lightning sets the ranks up: the one that writes the run's files. torchrun gives RANK,
    SLURM SLURM_PROCID, LSF JSM_NAMESPACE_RANK (as Lightning reads them); the processes
    Lightning starts carry LOCAL_RANK, on the node `python -m launch run` gives NODE_RANK."""
    for name in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(name):
            return int(os.environ[name]) == 0
    return all(int(os.environ.get(name) or 0) == 0 for name in ("NODE_RANK", "LOCAL_RANK"))


class RunDirLock:
    """One `condense train` at a time in a run dir. Two used to resume from each other's
    checkpoints and write the same files, logging each step twice, without a word.

    An exclusive flock on the folder itself: the kernel lets go when the process ends, a
    kill included, and no lock file is left to clean up or to move aside with a run. It
    holds on one machine: a mounted bucket (FUSE) locks on this machine alone, and where
    the file system has no flock (NFS refuses it here), there is no lock.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._fd: int | None = None

    def take(self) -> None:
        """Hold the run dir where it exists and this is rank 0 (launched_as_rank_zero); a
        ConfigError where another process holds it."""
        if self._fd is not None or not self.run_dir.is_dir() or not launched_as_rank_zero():
            return
        try:
            import fcntl
        except ImportError:  # not POSIX
            return
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"run_dir {self.run_dir} is in use by another condense train: wait for it to"
                " end, or give another --run-dir"
            ) from None
        except OSError:  # no flock on this file system
            os.close(fd)
            return
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_writable(run_dir: Path) -> None:
    """A ConfigError where this process cannot write the run's files: in run_dir (or, where
    it is still to be made, the nearest folder above it) and its checkpoints/. Asked before
    the models load: until now the first checkpoint found it out, a validation interval
    into training."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"run_dir {run_dir}: cannot make it ({existing} is a file)")
    for folder in (existing, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        try:
            fd, probe = tempfile.mkstemp(prefix=".condense-probe-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise ConfigError(
                f"run_dir {run_dir}: cannot write in {folder} ({err.strerror or err})"
            ) from None


def resolve_resume(resume: str, run_dir: Path) -> str | None:
    """Checkpoint to resume from: "never" -> None, "auto" -> last.ckpt if present, else a path.

    A path to another run's checkpoint that the run in `run_dir` started from, still at
    the step it started from (the same command again, after a stop or after it finished),
    gives run_dir's own last.ckpt: the run goes on, or has nothing to train, instead of
    starting over from that checkpoint. A checkpoint that has moved on since (its run
    trained further) starts the run afresh from it.
    """
    if resume == "never":
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume == "auto":
        return str(last) if last.is_file() else None
    if Path(resume).is_dir():
        raise FileNotFoundError(f"--resume {resume} is {_folder_for_a_checkpoint(Path(resume))}")
    if not Path(resume).is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    start = started_from(run_dir)
    if last.is_file() and start == (Path(resume).resolve(), step_of(read_checkpoint(resume))):
        return str(last)
    return resume


def _folder_for_a_checkpoint(folder: Path) -> str:
    """What the folder given as --resume is, and the checkpoint it holds: its
    own last.ckpt or best.ckpt, a run folder's in checkpoints/, or that it holds none."""
    # A run folder's last.ckpt was named as FOLDER/last.ckpt, which is in checkpoints/.
    for kept in (folder, folder / "checkpoints"):
        found = sorted(kept.glob("*.ckpt"), key=lambda f: (f.name != "last.ckpt", f.name))
        if found:
            return f"a folder: give a checkpoint file in it ({found[0]}, say)"
    if (folder / ARTIFACT_CONFIG_FILE).is_file():
        # An artifact holds the trained weights alone, not the optimizer and step a run
        # goes on from; the checkpoints are in the run folder beside it.
        beside = folder.parent / "checkpoints" / "last.ckpt"
        run = f" ({beside}, say)" if beside.is_file() else ""
        return f"an artifact, not a checkpoint: give its run's checkpoints/last.ckpt{run}"
    return "a folder holding no checkpoint (a run folder's is checkpoints/last.ckpt)"


def started_from(run_dir: Path) -> tuple[Path, int | None] | None:
    """The other run's checkpoint that the run in `run_dir` started from, and its step
    then; None if it started otherwise."""
    try:
        record = json.loads((run_dir / STARTED_FROM).read_text())
        return Path(record["path"]), record["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_start(run_dir: Path, resume_from: str | None, step: int) -> None:
    """Note, in a run starting afresh in `run_dir`, the checkpoint it started from and
    that checkpoint's step."""
    if resume_from is not None:
        record = {"path": str(Path(resume_from).resolve()), "global_step": step}
        write_atomic(run_dir / STARTED_FROM, json.dumps(record))


def read_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """A checkpoint's contents, memory-mapped (its tensors are not read) and weights-only
    (tensors and plain values: no code runs); None for a file that does not load so (cut
    short by a kill, a stray file, one holding objects). Whoever resumes from it names
    what is wrong (CondenseModule.check_checkpoint)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError):
        return None


def step_of(checkpoint: dict[str, Any] | None) -> int | None:
    """The step a read_checkpoint() result was saved at; None without one."""
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    return step if isinstance(step, int) else None


def set_aside_earlier_run(run_dir: Path) -> Path | None:
    """Move the files an earlier run left in `run_dir` into run_dir/earlier-<time>/, and
    return that folder (None when there were none).

    Called when a run starts fresh in a folder that already holds a run (`--resume never`,
    a run that was stopped before its first checkpoint, or one resumed from a checkpoint
    outside this folder: see `continues_run`): left in place, its metrics.csv
    rows would sit before the new run's, its W&B run id would be continued by a run that
    starts again at step 0, and until the new run's first checkpoint, `--resume auto` would
    pick up the earlier run's last.ckpt. Moved, nothing is mixed and nothing is lost.
    """
    found = [run_dir / name for name in RUN_FILES if _holds_something(run_dir / name)]
    if not found:
        return None
    # A start killed mid-move left its folder marked: the rest of that run goes there too.
    unfinished = sorted(run_dir.glob(f"earlier-*/{MOVING}"))
    aside = unfinished[0].parent if unfinished else _new_aside_folder(run_dir)
    (aside / MOVING).touch()
    for path in found:
        # checkpoints/ is emptied, not removed: the launchers watch it for new checkpoints.
        _move(path, aside / path.name, keep_folder=path.name == "checkpoints")
    (aside / MOVING).unlink()
    return aside


def _new_aside_folder(run_dir: Path) -> Path:
    stamp = f"earlier-{datetime.now():%Y%m%d-%H%M%S}"
    aside, count = run_dir / stamp, 1
    while aside.exists():  # two fresh starts within a second
        aside, count = run_dir / f"{stamp}-{count}", count + 1
    aside.mkdir()
    return aside


def continues_run(resume_from: str | None, run_dir: Path) -> bool:
    """Whether a run resuming from `resume_from` continues the files in `run_dir` (its
    metrics.csv, W&B run and checkpoints): only when it resumes run_dir's own checkpoint.
    From any other checkpoint, the training state carries on but the files start afresh."""
    if resume_from is None:
        return False
    return Path(resume_from).resolve().parent == (run_dir / "checkpoints").resolve()


def _holds_something(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _move(source: Path, target: Path, keep_folder: bool = False) -> None:
    # File by file: a bucket mounted as a file system (SkyPilot's MOUNT_CACHED, say) renames
    # files, but may refuse to rename a whole folder.
    if source.is_dir():
        target.mkdir(exist_ok=True)  # exists when a killed move is finished
        for child in source.iterdir():
            _move(child, target / child.name)
        if not keep_folder:
            source.rmdir()
    else:
        os.replace(source, target)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """run_dir's summary.json (written when a run ends), or None without one that reads."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def is_finished(summary_steps: int | None, step: int, max_steps: int) -> bool:
    """Whether a run resumed at `step` has nothing to train: its summary (of `summary_steps`
    steps) is of training up to that step (not of an earlier, shorter stretch; none is
    written when a run stops at its last step) and the step has reached max_steps."""
    return summary_steps is not None and summary_steps == step >= max_steps
