"""Loggers: a CSV log always, W&B online when it can be reached, offline otherwise.

W&B with a key but no network retries for minutes before failing, and with no key and
no WANDB_MODE it raises; so the mode is decided here, up front, with a quick probe.
"""

from __future__ import annotations

import csv
import io
import os
import uuid
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from condense.files import write_atomic
from condense.network import reachable

RUN_ID_FILE = "wandb_run_id"
DEFAULT_WANDB_URL = "https://api.wandb.ai"


def wandb_mode(setting: str) -> str | None:
    """ "online", "offline", or None (off) for a config's `wandb` setting."""
    if setting == "off":
        return None
    if setting == "auto":
        online = bool(os.environ.get("WANDB_API_KEY")) and reachable(
            os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL)
        )
        return "online" if online else "offline"
    return setting


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; a resumed run appends to it,
        # starting from the columns already in its header.
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run keeps the earlier rows of
    metrics.csv and appends its own, so the file holds the whole curve."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def drop_rows_from(metrics: Path, step: int) -> None:
    """Remove the rows of `metrics` (a metrics.csv) logged at `step` or later, and a row
    that a full disk or a kill cut short (it stopped every resume with an IndexError).

    A run killed after its last checkpoint logged steps that the resumed run trains and
    logs again; without this, metrics.csv would hold those steps twice. A checkpoint of
    step S was saved after S steps, whose rows (and that validation's) are logged at
    steps below S.
    """
    if not metrics.is_file():
        return
    with metrics.open(newline="") as f:
        text = f.read()
    rows = list(csv.reader(io.StringIO(text)))
    whole = text.endswith(("\n", "\r"))  # a row cut between \r and \n is whole
    if len(rows) == 1 and not whole:  # its header cut short: the resumed run writes it again
        metrics.unlink()
        return
    if not rows or "step" not in rows[0]:
        return
    if not whole:
        # A row cut short (a full disk, a kill mid-write): the next would join its line.
        rows.pop()
    header, column = rows[0], rows[0].index("step")
    kept = [header] + [
        row for row in rows[1:] if len(row) == len(header) and _step(row[column]) < step
    ]
    if len(kept) < len(rows) or not whole:
        out = io.StringIO()
        csv.writer(out).writerows(kept)  # \r\n, as Lightning writes it
        write_atomic(metrics, out.getvalue())


def _step(cell: str) -> float:
    """A row's step; infinity, so that the row goes, where a cut-short row left no number."""
    try:
        return float(cell)
    except ValueError:
        return float("inf")


def make_loggers(
    setting: str, project: str, name: str, run_dir: Path, fresh: bool = False
) -> list[Logger]:
    """A CSV logger writing run_dir/metrics.csv, plus W&B unless it is off.

    A resumed run (`fresh` false) reads the W&B run id from run_dir when a run left one
    there, so it continues the same W&B run; a fresh one gets a new id. `keep_run_id`
    writes it. Nothing is written here: with several processes, only global rank 0 writes.
    """
    # Written out at every logged step, not every 100: a SIGKILL would lose the rows since
    # the last write, and an append costs nothing beside a training step.
    csv_logger = ResumableCSVLogger(run_dir, name="", version="", flush_logs_every_n_steps=1)
    loggers: list[Logger] = [csv_logger]
    mode = wandb_mode(setting)
    if mode is None:
        return loggers
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    id_file = run_dir / RUN_ID_FILE
    resumable = not fresh and id_file.is_file()
    run_id = id_file.read_text().strip() if resumable else uuid.uuid4().hex[:8]
    logger = WandbLogger(
        project=project,
        name=name,
        id=run_id,
        resume="allow",
        save_dir=str(run_dir),
        offline=mode == "offline",
        settings=wandb.Settings(init_timeout=90, silent=True),
    )
    # Lightning passes anonymous=None whatever it is given, and wandb (0.31 here) prints "The
    # anonymous setting has no effect" for any value: a warning in every run that no user
    # can act on. Absent, wandb's default is the same.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    loggers.append(logger)
    return loggers


def keep_run_id(loggers: list[Logger], run_dir: Path) -> None:
    """Write the W&B run id to run_dir/wandb_run_id (no-op when W&B is off)."""
    run_id = wandb_run_id(loggers)
    if run_id is not None:
        write_atomic(run_dir / RUN_ID_FILE, run_id)


def wandb_run_id(loggers: list[Logger]) -> str | None:
    """The W&B run id, or None when W&B is off."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            return logger.version
    return None


def finish_wandb(loggers: list[Logger]) -> None:
    """End the W&B run, if any: Lightning leaves it open, and a later `train()` in the same
    process would then log into it instead of its own run."""
    if wandb_run_id(loggers) is not None:
        import wandb

        wandb.finish()
