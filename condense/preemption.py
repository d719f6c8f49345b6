"""Stop on SIGTERM with a checkpoint: what a preempted cloud node gets before it goes.

Lightning already handles SIGTERM: its handler sets `trainer.received_sigterm` (and
forwards the signal to the DDP processes it started), the fit loop finishes the batch in
progress, raises `SIGTERMException` (a `SystemExit`) and calls every callback's
`on_exception`. `SaveOnSigterm` is that callback: it writes last.ckpt there, at a step
boundary, so a restart resumes from the step the signal interrupted, not from the last
validation. Checkpoints are written beside themselves and renamed into place
(condense/checkpoint_io.py), so a SIGKILL during the save leaves the previous last.ckpt
whole.

A validation the signal cuts short runs again, whole, on resume (`restart_validation`),
the final one at max_steps included (`SaveOnSigterm.on_load_checkpoint`).

A first Ctrl-C (SIGINT) while training stops the same way, with a checkpoint, where
Lightning would have stopped at once and saved nothing since the last validation; a
second one stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

# The logger of Lightning's signal handlers.
SIGNAL_LOG = "lightning.pytorch.trainer.connectors.signal_connector"
# The exit status of a process ended by SIGTERM (128 + 15): a launcher or a shell sees
# "terminated", not "finished", and a managed job is not marked as done.
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM
# What SIGTERMException ends a process with: SIGTERM's status, or Ctrl-C's (128 + 2) once
# a Ctrl-C has asked for the stop.
stop_exit_code = SIGTERM_EXIT_CODE
# Set when a Ctrl-C stopped a fit or validation at once: Lightning ends that with exit
# status 1, which stop_statuses makes Ctrl-C's.
interrupted = False


@contextmanager
def stop_statuses() -> Iterator[None]:
    """Around a training run from the command line (`condense train`, a launcher's node):
    a stop ends the process with the status of what stopped it, SIGTERM's 143 or Ctrl-C's
    130, where Lightning raises SIGTERMException after the checkpoint is saved or exits 1
    after a Ctrl-C it caught (which a launcher would retry as a crash)."""
    global interrupted, stop_exit_code
    # Of this run alone: a Ctrl-C of an earlier one in the process (a notebook, tests) set
    # them, and a SIGTERM in this one's first validation, before fit resets them, said 130.
    interrupted, stop_exit_code = False, SIGTERM_EXIT_CODE
    try:
        yield
    except SIGTERMException:
        # last.ckpt is saved and said so; "terminated", not "finished", to whoever waits.
        raise SystemExit(stop_exit_code) from None
    except SystemExit:
        if interrupted:
            raise SystemExit(128 + signal.SIGINT) from None
        raise


FIRST_VALIDATION_STOP = (
    "condense: SIGTERM during the first validation: stopped before any training step;"
    " nothing to save"
)


def stop_if_signalled(trainer: L.Trainer) -> None:
    """After the first validation (trainer.validate, before fit): stop as a SIGTERM in
    training stops, where one came during it. Lightning stops a validation on SIGTERM only
    between its batches: one in its last batch was remembered, and then forgotten by fit,
    which registers its handlers afresh; the run trained on to max_steps and exited 0.
    Ranks that finished the validation agree (a collective): one's signal stops them all.
    A rank whose signal came earlier stopped inside the validation, and does not join; the
    others wait for it until its exit ends the job (torchrun's agent, or Lightning's
    launcher, stops them), as they would have waited in fit."""
    if trainer.strategy.reduce_boolean_decision(trainer.received_sigterm, all=False):
        rank_zero_info(FIRST_VALIDATION_STOP)
        raise SIGTERMException


class SaveOnSigterm(Callback):
    """Saves a checkpoint to `path` when training stops on SIGTERM or a first Ctrl-C.

    Args:
        path: Where to write it; the run's last.ckpt, so `--resume auto` picks it up.
        resume_hint: How to resume, said after the save: "run the same command again"
            where the command names its run dir, else with the `--run-dir` it would need.
    """

    def __init__(self, path: Path, resume_hint: str = "run the same command again"):
        self.path = Path(path)
        self.resume_hint = resume_hint
        self._cut_validation = False
        self._max_steps: int | None = None  # set while a cut final validation reruns
        self._rerun_at: int | None = None  # the batch count a cut validation reruns at
        self._val_check_batch: Any = None  # Lightning's interval, while it is set aside
        self._sigint: Any = None  # the SIGINT handler to put back after fit
        self._signal = "SIGTERM"  # what asked for the stop

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # After Lightning's own handlers are set: on any way out of fit, it puts back the
        # SIGINT handler it found, not this one. Signal handlers can be set from the main
        # thread only (not from a notebook's worker thread).
        if threading.current_thread() is threading.main_thread():
            self._sigint = signal.signal(signal.SIGINT, self._on_ctrl_c)
        self._set_stop("SIGTERM", SIGTERM_EXIT_CODE)  # an earlier fit's Ctrl-C is over
        if self._rerun_at is not None:
            # Lightning reruns a cut validation only where its interval test passes at the
            # restart: off the interval (the final validation at max_steps, or an interval
            # changed since) it trained on instead, past max_steps at the end. The rerun's
            # end (on_validation_end) puts the interval back.
            self._val_check_batch, trainer.val_check_batch = trainer.val_check_batch, self._rerun_at
            self._rerun_at = None

    def _set_stop(self, name: str, exit_code: int) -> None:
        global stop_exit_code
        self._signal, stop_exit_code = name, exit_code

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self._sigint is not None:
            signal.signal(signal.SIGINT, self._sigint)
            self._sigint = None

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        """The first Ctrl-C stops as SIGTERM does, through Lightning's own handler (which
        also tells the processes it started); the next one interrupts at once."""
        sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if not callable(sigterm):  # Lightning set none (Windows): stop as before
            raise KeyboardInterrupt
        self._set_stop("Ctrl-C", 128 + signal.SIGINT)
        rank_zero_info(
            "condense: Ctrl-C: stopping after this step with a checkpoint"
            " (Ctrl-C again stops at once, without one)"
        )
        # Lightning's handler logs "Received SIGTERM: 15", which the user did not send.
        said = logging.getLogger(SIGNAL_LOG)
        said.disabled = True
        try:
            sigterm(signal.SIGTERM, frame)
        finally:
            said.disabled = False

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: Any) -> None:
        if isinstance(exception, KeyboardInterrupt):  # a second Ctrl-C, or one before fit
            global interrupted
            interrupted = True
            rank_zero_info("condense: Ctrl-C: stopped at once, without saving this step")
            return
        if not isinstance(exception, SIGTERMException):
            return
        # Only SIGTERM, raised by Lightning between steps, leaves a state worth saving;
        # during the first validation there is nothing trained to save yet.
        if trainer.state.fn != TrainerFn.FITTING:
            rank_zero_info(FIRST_VALIDATION_STOP)
            return
        self._cut_validation = trainer.validating
        # All ranks call it; rank 0 writes. A whole checkpoint, optimizer and loops too:
        # left unset, Lightning says "`weights_only` was not set", which reads as a claim
        # about how checkpoints are loaded (always weights-only here, checkpoint_io.py).
        trainer.save_checkpoint(self.path, weights_only=False)
        rank_zero_info(
            f"condense: {self._signal}: saved step {trainer.global_step} to {self.path};"
            f" {self.resume_hint} to resume"
        )

    def on_load_checkpoint(
        self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning's fit loop is done at max_steps before it looks for a cut validation
        # to rerun, so a resume from one cut at max_steps would skip it for good, and with
        # it the best checkpoint and artifact it could make. One step more lets the loop
        # in; on_validation_end takes it back before any training step could use it.
        at_end = trainer.max_steps != -1 and checkpoint.get("global_step", 0) >= trainer.max_steps
        cut = trainer.state.fn == TrainerFn.FITTING and validation_was_cut(checkpoint)
        if cut and at_end:
            self._max_steps = trainer.max_steps
            trainer.fit_loop.epoch_loop.max_steps = self._max_steps + 1
        if cut:
            self._rerun_at = batches_trained(checkpoint)
        restore_log_step(checkpoint, trainer.val_check_interval, rerun=cut)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._max_steps is not None:
            trainer.fit_loop.epoch_loop.max_steps, self._max_steps = self._max_steps, None
        if self._val_check_batch is not None:
            trainer.val_check_batch, self._val_check_batch = self._val_check_batch, None

    def on_save_checkpoint(
        self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._cut_validation:
            restart_validation(checkpoint)
        else:
            settle_validation(checkpoint)
        keep_log_step(checkpoint, trainer.validating)


def restart_validation(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint saved in the middle of a validation run that validation again,
    from its first batch, when training resumes from it.

    Lightning stops a validation on SIGTERM after a batch, with every counter of its
    progress equal, which on resume reads as a validation that finished: it is skipped,
    and with it the best checkpoint and artifact it could have made. Lightning reruns a
    validation when the checkpoint shows one batch started but not processed, and starts
    it where the counters of the current run say: here, at 0.
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    total, current = progress["total"], progress["current"]
    done = total["completed"] - current["completed"]  # batches of earlier validations
    total.update(ready=done + 1, started=done + 1, processed=done, completed=done)
    current.update(ready=0, started=0, processed=0, completed=0)
    progress["is_last_batch"] = False


def validation_was_cut(checkpoint: dict[str, Any]) -> bool:
    """Whether `checkpoint` was marked by restart_validation: saved by a SIGTERM in the
    middle of a validation that has not run again since."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loop.get("epoch_loop.val_loop.batch_progress")
    return progress is not None and progress["total"]["started"] > progress["total"]["processed"]


def settle_validation(checkpoint: dict[str, Any]) -> None:
    """Undo restart_validation's mark in a checkpoint saved after the rerun: Lightning
    clears the validation loop's total counters only at a new epoch, so the started but
    unprocessed batch would stay, and a resume from any later checkpoint of the epoch
    would rerun a validation, for one batch. Every save outside a validation sees whole
    batches only."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    if "epoch_loop.val_loop.batch_progress" not in loop:  # a weights-only save
        return
    total = loop["epoch_loop.val_loop.batch_progress"]["total"]
    total.update(ready=total["completed"], started=total["completed"])
    total.update(processed=total["completed"])


# The loggers' step the next training batch logs at, as a checkpoint keeps it.
LOG_STEP = "condense_log_step"


def keep_log_step(checkpoint: dict[str, Any], validating: bool) -> None:
    """Keep in `checkpoint` the step the loggers' next row takes (metrics.csv's and W&B's
    step column: Lightning's count of batches that stepped).

    Lightning counts a batch after its validation, and on resume counts the checkpoint's
    batch once more when that batch was one that validates, assuming the save came from
    inside the validation. A save on SIGTERM after a validation came after the count, and
    the final validation at max_steps is off the interval: resumed, their rows were one
    step high or one step low for the rest of the run (and W&B drops a step that goes
    back). A save inside a validation (validating) comes before the count.
    """
    state = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict")
    if state is not None:  # None in a weights-only save
        checkpoint[LOG_STEP] = state["_batches_that_stepped"] + int(validating)


def restore_log_step(checkpoint: dict[str, Any], val_check_interval: Any, rerun: bool) -> None:
    """Set the count Lightning restores so that, after its own correction, the next row
    takes the step keep_log_step kept. Checkpoints without it are left as they are.

    Every checkpoint condense saves is one Lightning restarts "on last" (its batch
    counters all equal): it then counts the batch again only where the batch validates
    at the restart, on the interval or for a cut validation's rerun (`rerun`)."""
    state = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict")
    if LOG_STEP not in checkpoint or state is None:
        return
    # Lightning's test (_should_check_val_fx, with check_val_every_n_epoch=None): the
    # batches so far are a whole number of validation intervals.
    on_interval = isinstance(val_check_interval, int) and (
        batches_trained(checkpoint) % val_check_interval == 0
    )
    state["_batches_that_stepped"] = checkpoint[LOG_STEP] - int(rerun or on_interval)


def batches_trained(checkpoint: dict[str, Any]) -> int:
    """The training batches a checkpoint's fit loop had taken, over all epochs."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    return progress["total"]["ready"]
