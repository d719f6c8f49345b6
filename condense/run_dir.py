"""The run folder: which one a run writes to, what it resumes from, and what becomes of an
earlier run's files when a run starts fresh in the same folder."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from condense.config import TrainConfig

RUN_DIR_ENV = "CONDENSE_RUN_DIR"

# What a run writes into its folder, besides W&B's own wandb/ (one folder per W&B run id,
# so runs never share it).
RUN_FILES = (
    "checkpoints",
    "artifact",
    "metrics.csv",
    "hparams.yaml",
    "config.yaml",
    "summary.json",
    "wandb_run_id",
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


def resolve_resume(resume: str, run_dir: Path) -> str | None:
    """Checkpoint to resume from: "never" -> None, "auto" -> last.ckpt if present, else a path."""
    if resume == "never":
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    return resume


def set_aside_earlier_run(run_dir: Path) -> Path | None:
    """Move the files an earlier run left in `run_dir` into run_dir/earlier-<time>/, and
    return that folder (None when there were none).

    Called when a run starts fresh in a folder that already holds a run (`--resume never`,
    or a run that was stopped before its first checkpoint): left in place, its metrics.csv
    rows would sit before the new run's, its W&B run id would be continued by a run that
    starts again at step 0, and until the new run's first checkpoint, `--resume auto` would
    pick up the earlier run's last.ckpt. Moved, nothing is mixed and nothing is lost.
    """
    found = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    if not found:
        return None
    stamp = f"earlier-{datetime.now():%Y%m%d-%H%M%S}"
    aside, count = run_dir / stamp, 1
    while aside.exists():  # two fresh starts within a second
        aside, count = run_dir / f"{stamp}-{count}", count + 1
    aside.mkdir()
    for path in found:
        _move(path, aside / path.name)
    return aside


def _move(source: Path, target: Path) -> None:
    # File by file: a bucket mounted as a file system (SkyPilot's MOUNT_CACHED, say) renames
    # files, but may refuse to rename a whole folder.
    if source.is_dir():
        target.mkdir()
        for child in source.iterdir():
            _move(child, target / child.name)
        source.rmdir()
    else:
        os.replace(source, target)
