"""`condense train`: check the run dir and resume, build, fit, write summary.json and
the artifact."""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from tqdm.contrib.logging import logging_redirect_tqdm

from condense.build import build
from condense.callbacks import ExportBest, LogGenerations, ProgressBar
from condense.checkpoint_io import AtomicCheckpointIO, BestAndLastCheckpoint
from condense.config import ConfigError, TrainConfig, first_line
from condense.data import CondenseDataModule, is_synthetic
from condense.device import FLOAT16_ON_CPU, check_devices, on_gpu, resolve_precision
from condense.files import (
    artifact_holding,
    inside,
    remove_temporaries,
    write_atomic,
    write_json,
)
from condense.loggers import (
    drop_rows_from,
    finish_wandb,
    keep_run_id,
    make_loggers,
    wandb_run_id,
)
from condense.model import Condenser
from condense.module import CondenseModule, NonFiniteLossError
from condense.preemption import SaveOnSigterm, stop_if_signalled, validation_was_cut
from condense.push import PushError, push_artifact, push_token
from condense.rng import ResumeRandomState
from condense.run_dir import (
    RUN_DIR_ENV,
    RunDirLock,
    check_writable,
    continues_run,
    is_finished,
    launched_as_rank_zero,
    read_checkpoint,
    read_summary,
    record_start,
    resolve_resume,
    resolve_run_dir,
    set_aside_earlier_run,
    step_of,
)
from condense.weights import hub_commit, resolve_model


class _NoAdvert(logging.Filter):
    """Drops Lightning's "Tip: try installing litlogger" line, printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


# Where Lightning's lines print, and condense's through rank_zero_info (see quiet_lightning):
# handlers on "lightning.pytorch" and "lightning.fabric", or on "lightning" alone where the
# root logger had one when Lightning was imported (which then prints them too).
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def lines_above_progress_bar() -> Any:
    """A context in which Lightning's log lines print above its progress bar, through
    tqdm.write: on a terminal they shared the bar's line, which then drew again below them
    ("... val_loss=5.870]`Trainer.fit` stopped")."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    # Only those that print: tqdm adds its handler to every logger it is given, and one
    # on a logger that passes its lines up to a printing one would print them twice.
    return logging_redirect_tqdm([log for log in loggers if _prints(log)])


def _prints(log: logging.Logger) -> bool:
    """Whether `log` has a handler of its own that writes to stdout or stderr."""
    return any(
        isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)
        for handler in log.handlers
    )


@functools.cache
def quiet_lightning() -> None:
    """Silence Lightning's warnings and lines that a condense run causes on purpose; once a
    process, from train(), so that importing condense changes no one else's warnings."""
    # The frozen decoder is in eval mode on purpose (no dropout); Lightning warns about it.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    # A resumed run's checkpoint folder holds its checkpoints, and one resumed from another
    # run's checkpoint starts its best score afresh, on purpose: Lightning warns of both.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* will be reloaded")
    # Lightning's: it counts logging by batches of an epoch, but logs by global step, so the
    # rows it says would be missing are there. And one from torch inside Lightning's own code.
    warnings.filterwarnings("ignore", message=r"The number of training batches .* logging interval")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # rank_zero_info logs through one of these, whichever Lightning module was imported last.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoAdvert())


def train(cfg: TrainConfig, *, check_finished: bool = True) -> dict[str, Any]:
    """Train a condenser as `cfg` says; returns the summary also written to summary.json.

    With several processes (DDP) every process calls this; only global rank 0 writes
    files. On SIGTERM it saves last.ckpt and raises Lightning's `SIGTERMException`.
    A resumed run whose summary.json says it has trained to max_steps trains nothing, and
    another run's checkpoint at max_steps is refused; `check_finished=False` skips both
    looks, for a caller that decided for every process that the run is not finished (on
    several nodes each sees its own run dir).
    """
    quiet_lightning()
    try:
        with lines_above_progress_bar():
            return _train(cfg, check_finished)
    finally:
        if not cfg.run_dir:
            # The folder resolve_run_dir chose is this run's alone, however the run ended:
            # a next train() in this process picks anew.
            os.environ.pop(RUN_DIR_ENV, None)


def _train(cfg: TrainConfig, check_finished: bool) -> dict[str, Any]:
    start = time.monotonic()
    L.seed_everything(cfg.seed, verbose=False)
    precision = _training_precision(cfg)
    # The run dir, the checkpoint to resume from, the data and the weights are all checked
    # before anything is written, so a bad input costs nothing but its error message.
    run_dir = _checked_run_dir(cfg)
    lock = RunDirLock(run_dir)
    lock.take()
    try:
        return _train_in(cfg, check_finished, precision, run_dir, lock, start)
    finally:
        lock.release()


def _train_in(
    cfg: TrainConfig,
    check_finished: bool,
    precision: str,
    run_dir: Path,
    lock: RunDirLock,
    start: float,
) -> dict[str, Any]:
    """_train's run, in `run_dir`, which `lock` holds (or takes once the run makes it)."""
    first = launched_as_rank_zero()
    if first:
        check_writable(run_dir)
    resume_from = resolve_resume(cfg.resume, run_dir)
    continues = continues_run(resume_from, run_dir)
    # Before the models load (minutes). Not where a caller decided for every process that
    # there is training to do: on several nodes, one whose storage lags resumes from the
    # first node's checkpoint, outside its own folder, and must take part.
    # A finished run's own last step is the same command again: told below, not refused.
    finished = _finished_summary(run_dir, resume_from, cfg.max_steps) if continues else None
    if finished is not None and check_finished:
        return _rerun_of_finished(finished, cfg, run_dir, first)
    if resume_from is not None and check_finished:
        check_something_to_train(resume_from, cfg.max_steps, own=continues)
    if cfg.hub_repo:
        push_token(cfg.hub_repo)  # the push comes at the end: no token, no hours of training
    saved = read_checkpoint(resume_from) if resume_from is not None else None
    commits = trained_commits(saved, cfg)
    module, datamodule = build(cfg, precision, commits)
    say_pinned(module.condenser, commits)
    rank_zero_info(parameters_line(module.condenser))
    resumed_step = module.check_checkpoint(resume_from) if resume_from is not None else 0
    if continues:  # another run's checkpoint may start this one on other data
        state = (saved or {}).get(type(datamodule).__qualname__)  # read once, above
        datamodule.check_same_split(state, resume_from)
    loggers = make_loggers(cfg.wandb, cfg.wandb_project, cfg.name, run_dir, not continues)
    checkpoints = BestAndLastCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
    )
    watch = [LogGenerations(datamodule.val_samples)]
    trainer = make_trainer(cfg, precision, run_dir, loggers, checkpoints, watch)
    if trainer.is_global_zero:
        _write_run_start(cfg, run_dir, lock, loggers, resume_from, resumed_step, continues)
    if resume_from is None:
        module.val_loss_initial = trainer.validate(module, datamodule, verbose=False)[0]["val_loss"]
        stop_if_signalled(trainer)
    try:
        trainer.fit(module, datamodule, ckpt_path=resume_from, weights_only=True)
    except NonFiniteLossError as err:
        kept = checkpoints.last_model_path or "none yet (no validation had run)"
        raise NonFiniteLossError(f"{err}; last good checkpoint: {kept}") from None
    finally:
        finish_wandb(loggers)

    summary = _summary(trainer, module, datamodule, checkpoints, loggers, run_dir, precision)
    summary.update(
        wall_s=round(time.monotonic() - start, 1),
        resumed_from=resume_from and str(Path(resume_from).resolve()),
        resumed_at_step=resumed_step,  # wall_s is the time from there
    )
    if not trainer.is_global_zero:
        return summary
    return _publish(summary, cfg, run_dir)


def _training_precision(cfg: TrainConfig) -> str:
    """The run's full Lightning precision, on a device this machine has; float16 refused
    on a CPU, before anything loads."""
    check_devices(cfg.accelerator)
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    if precision in FLOAT16_ON_CPU and not on_gpu(cfg.accelerator):
        raise ConfigError(
            f"precision {precision} runs on a GPU only: {FLOAT16_ON_CPU[precision]}; on a CPU"
            " use bf16-mixed or 32"
        )
    return precision


def _checked_run_dir(cfg: TrainConfig) -> Path:
    """The run's folder (resolve_run_dir), refused where it is a file, or lies inside the
    --data folder or an artifact folder."""
    run_dir = resolve_run_dir(cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir {str(run_dir)!r} is a file, not a folder")
    # Not "": that is the working folder, where `--data ""` is refused for itself; nor
    # synthetic, made whatever folder of that name there is.
    local = isinstance(cfg.data, str) and cfg.data.strip() and not is_synthetic(cfg.data)
    if local and inside(run_dir, cfg.data):
        # Its artifact's JSON files would be read as training data by the next run.
        raise ConfigError(
            f"run_dir {run_dir} is inside the --data folder {cfg.data}: give a run dir outside it"
        )
    artifact = artifact_holding(run_dir)
    if artifact is not None:
        # Checkpoints, metrics and a second artifact inside it, all pushed with it.
        where = "an artifact folder" if artifact == run_dir else f"inside the artifact {artifact}"
        raise ConfigError(
            f"run_dir {run_dir} is {where}, whose folder holds the artifact alone: give a run"
            " dir outside it"
        )
    return run_dir


def _write_run_start(
    cfg: TrainConfig,
    run_dir: Path,
    lock: RunDirLock,
    loggers: list[Logger],
    resume_from: str | None,
    resumed_step: int,
    continues: bool,
) -> None:
    """Global rank 0, once everything is checked: the run dir made and held (`lock`), an
    earlier run in it set aside (or a continued run's metrics rows after its checkpoint
    dropped), its start recorded, config.yaml written, and the hyperparameters logged."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"run_dir {run_dir}: cannot make it ({err.strerror or err})") from None
    # A run dir made just now; one made by a run that started beside this one (the same
    # runs/NAME-TIME, or a new --run-dir) is refused here, before anything of it moves.
    lock.take()
    # write_atomic's temporary files (.config.yaml.tmp-PID) that a kill left: no other
    # process writes here (RunDirLock), and nothing reads them.
    remove_temporaries(run_dir)
    if continues:
        drop_rows_from(run_dir / "metrics.csv", resumed_step)
    else:
        aside = set_aside_earlier_run(run_dir)
        if aside is not None:
            print(f"condense: {run_dir} held an earlier run; its files are now in {aside}")
        record_start(run_dir, resume_from, resumed_step)
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    keep_run_id(loggers, run_dir)
    for logger in loggers:
        logger.log_hyperparams(cfg.to_dict())


def _summary(
    trainer: L.Trainer,
    module: CondenseModule,
    datamodule: CondenseDataModule,
    checkpoints: BestAndLastCheckpoint,
    loggers: list[Logger],
    run_dir: Path,
    precision: str,
) -> dict[str, Any]:
    """summary.json's fields that the fit decides (the caller adds the time and resume)."""
    where = run_dir.resolve()
    # The last validation's loss: this process's own, or its checkpoint's.
    final = trainer.callback_metrics.get("val_loss", checkpoints.last_score)
    return {
        "steps": trainer.global_step,
        "wall_s": None,
        "val_loss_initial": _float(module.val_loss_initial),
        "val_loss_best": _float(checkpoints.best_model_score),
        "val_loss_final": _float(final),
        "best_checkpoint": checkpoints.best_model_path or None,
        "last_checkpoint": checkpoints.last_model_path or None,
        "wandb_run_id": wandb_run_id(loggers),
        # Absolute, as Lightning gives the checkpoints': the summary is read from anywhere.
        "artifact": str(where / "artifact") if (where / "artifact").is_dir() else None,
        "run_dir": str(where),
        "precision": precision,
        "resumed_from": None,
        "resumed_at_step": 0,
        "world_size": trainer.world_size,
        "skipped_steps": module.skipped_steps,
        "data": datamodule.report.as_dict(),
        "notes": datamodule.report.notes()
        + _null_loss_notes(val_loss_initial=module.val_loss_initial, val_loss_final=final),
        "pushed_to": None,
    }


def _publish(summary: dict[str, Any], cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Push the artifact when the job names a Hub repo it is not yet pushed to, write
    summary.json, say where things are. A failed push is raised after the summary is
    written: the run and its artifact are kept, the push is not."""
    push_error = None
    pushed = summary.get("pushed_to") or ""
    if cfg.hub_repo and summary["artifact"] and not pushed.endswith("/" + cfg.hub_repo):
        try:
            summary["pushed_to"] = push_artifact(
                Path(summary["artifact"]), cfg.hub_repo, cfg.hub_public
            )
        except PushError as err:
            push_error = err
    write_json(run_dir / "summary.json", summary)
    print(describe(summary))
    if push_error:
        raise push_error
    return summary


def _rerun_of_finished(
    summary: dict[str, Any], cfg: TrainConfig, run_dir: Path, is_global_zero: bool
) -> dict[str, Any]:
    """The same command again after the run finished (by hand, or a launcher started again):
    nothing to train, so the summary its training wrote stands, not one of a run of no steps.
    A push the job asks for and that has not succeeded is tried again: the likeliest reason
    to re-run is one that failed."""
    if not is_global_zero:
        return summary
    print(
        f"condense: {run_dir} has already trained {summary['steps']} of max_steps"
        f" {cfg.max_steps}; nothing to train (raise --max-steps to go on)"
    )
    return _publish(summary, cfg, run_dir)


def _finished_summary(run_dir: Path, last: str, max_steps: int) -> dict[str, Any] | None:
    """The summary of the run in `run_dir`, whose last checkpoint is `last`, where it ended
    at max_steps and wrote that summary at that step (`_rerun_of_finished` then says so);
    None where it has training left, or stopped before its summary."""
    written = read_summary(run_dir)
    step = step_of(read_checkpoint(last))
    finished = written is not None and is_finished(written.get("steps"), step, max_steps)
    return written if finished else None


def check_something_to_train(path: str, max_steps: int, own: bool = False) -> None:
    """Refuse a checkpoint that is at max_steps already, with no validation left to rerun:
    Lightning would end at once, leaving no new checkpoint, no artifact and a summary of
    nothing. `own`: the run dir's own last checkpoint, which --resume did not name; it is
    refused only past max_steps (a lower --max-steps than the run got to): at max_steps,
    its run ended before writing its summary, which this run writes. A file that does not
    load is let through: check_checkpoint names why."""
    saved = read_checkpoint(path)
    step = step_of(saved)
    past = step is not None and (step > max_steps if own else step >= max_steps)
    if past and not validation_was_cut(saved):
        named = f"this run dir's last checkpoint {path}" if own else f"--resume {path}"
        raise ConfigError(
            f"{named} is at step {step} and max_steps is {max_steps}: nothing to"
            " train (raise --max-steps to go on from it)"
        )


def resume_hint(cfg: TrainConfig, run_dir: Path) -> str:
    """How a stopped run goes on: the same command, where it names its run dir; without
    one, the same command would start a new runs/<name>-<time>."""
    if cfg.run_dir:
        return "run the same command again"
    return f"run the same command again with --run-dir {run_dir}"


def make_trainer(
    cfg: TrainConfig,
    precision: str,
    run_dir: Path,
    loggers: list,
    checkpoints: ModelCheckpoint,
    extra_callbacks: list[Callback] | None = None,
) -> L.Trainer:
    """The Lightning Trainer for a run: devices, nodes and strategy from the config (DDP when
    there are several processes), validation and checkpoints every `val_every_n_steps`.
    Devices or a strategy Lightning refuses are a ConfigError (one line)."""
    callbacks = [
        # First, so that on an exception its bars close before SaveOnSigterm's last line.
        ProgressBar(refresh_rate=1),
        checkpoints,
        ExportBest(run_dir / "artifact", cfg),
        SaveOnSigterm(run_dir / "checkpoints" / "last.ckpt", resume_hint(cfg, run_dir)),
        ResumeRandomState(),
        LearningRateMonitor(logging_interval="step"),
        *(extra_callbacks or []),
    ]
    try:
        return L.Trainer(
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy=cfg.strategy,
            # The length-grouped sampler shards batches across ranks itself.
            use_distributed_sampler=False,
            precision=precision,
            max_steps=cfg.max_steps,
            val_check_interval=cfg.val_every_n_steps,
            check_val_every_n_epoch=None,
            # cfg.val_batches is the validation sampler's: limit_val_batches counts per rank.
            num_sanity_val_steps=0,
            # The first validation (trainer.validate, before fit) runs under no_grad as fit's
            # own do: under inference_mode its tensors fail the compiled blocks' guards, so
            # model.compile compiled every validation graph a second time inside fit.
            inference_mode=False,
            gradient_clip_val=cfg.optim.grad_clip or None,
            log_every_n_steps=cfg.log_every_n_steps,
            logger=loggers,
            plugins=[AtomicCheckpointIO()],
            callbacks=callbacks,
            default_root_dir=run_dir,
            # Its table says "FLOPs 0" (it counts none without an example input) and warns
            # that bf16-mixed is not supported by it: parameters_line says what it would.
            enable_model_summary=False,
        )
    # What Lightning raises for devices or a strategy it cannot use (foo: TypeError and
    # ValueError; 0: MisconfigurationException; a 31-digit count: OverflowError); the
    # settings were checked, the rest is its.
    except (ValueError, TypeError, OverflowError, MisconfigurationException) as err:
        raise ConfigError(
            f"devices={cfg.devices!r}, strategy={cfg.strategy!r}, num_nodes={cfg.num_nodes}:"
            f" {first_line(err)}"
        ) from err


def trained_commits(saved: dict[str, Any] | None, cfg: TrainConfig) -> dict[str, str | None]:
    """The Hub commits the checkpoint to resume from (`saved`, as read_checkpoint reads it)
    was trained on, for each base model `cfg` names as it did: a preempted run that restarts
    after the model's repo moved on would otherwise train its adapter on other weights (or
    tokens) from there."""
    recorded = saved.get("base_models") if isinstance(saved, dict) else None
    commits: dict[str, str | None] = {"encoder": None, "decoder": None}
    for role in commits:
        model = (recorded or {}).get(role) or {}
        if model.get("name") == getattr(cfg.model, role):
            commits[role] = model.get("commit")
    return commits


def say_pinned(condenser: Condenser, commits: dict[str, str | None]) -> None:
    """Say which base model a resume loaded at the checkpoint's commit (`commits`) where the
    Hub cache's main has moved on since."""
    for role, model in condenser.base_models().items():
        if model["commit"] is None or model["commit"] != commits.get(role):
            continue  # a folder, the embedded model, or not pinned
        newest = hub_commit(resolve_model(model["name"]))
        if newest and newest != model["commit"]:
            rank_zero_info(
                f"condense: {role} {model['name']} at commit {model['commit']}, the"
                f" checkpoint's (its main is now {newest}); start a new run to train on that"
            )


def _float(value: Any) -> float | None:
    """A loss for summary.json: nan and infinities are null, as JSON has neither."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _null_loss_notes(**losses: Any) -> list[str]:
    """Which of summary.json's losses are null for being nan or infinite."""
    return [
        f"{name} is null: the loss was {float(value)}"
        for name, value in losses.items()
        if value is not None and not math.isfinite(float(value))
    ]


def parameters_line(condenser: Condenser) -> str:
    """How many of the condenser's parameters train, and which, in a line."""
    total = sum(p.numel() for p in condenser.parameters())
    groups = {name: sum(p.numel() for p in ps) for name, ps in condenser.parameter_groups().items()}
    trained = sum(groups.values())
    parts = ", ".join(f"{name} {count:,}" for name, count in groups.items())
    return f"condense: {trained:,} of {total:,} parameters train ({parts}); the rest are frozen"


def describe(summary: dict[str, Any]) -> str:
    """A few lines for a person: how long, how far the loss fell, where things are."""
    initial, best = summary["val_loss_initial"], summary["val_loss_best"]
    change = ""
    if initial and best is not None:
        fell = 100 * (initial - best) / initial
        change = (
            f" ({_percent(fell)} lower)"
            if fell >= 0
            else f" ({_percent(-fell)} higher: no better than untrained)"
        )
    steps, since = summary["steps"], summary.get("resumed_at_step") or 0
    took = f"{steps} steps in {summary['wall_s']:.0f} s"
    if since:  # this process ran only the steps after the checkpoint it resumed from
        took = f"{steps} steps, the last {steps - since} in {summary['wall_s']:.0f} s (resumed at step {since})"
    return "\n".join(
        [
            f"condense: {took} ({summary['precision']})",
            f"  val loss: initial {_fmt(initial)}, best {_fmt(best)}{change}, final {_fmt(summary['val_loss_final'])}",
            f"  best checkpoint: {summary['best_checkpoint']}",
            f"  last checkpoint: {summary['last_checkpoint']}",
            f"  summary: {os.path.join(summary['run_dir'], 'summary.json')}",
            *(f"  note: {note}" for note in summary.get("notes", [])),
        ]
        + ([f"  pushed to: {summary['pushed_to']}"] if summary.get("pushed_to") else [])
    )


def _percent(value: float) -> str:
    """A percentage to a tenth below 10% (a 0.45% fall read "0% lower"), whole above it."""
    return f"{value:.1f}%" if value < 10 else f"{value:.0f}%"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
