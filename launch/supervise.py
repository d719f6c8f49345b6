"""Run `python -m launch run` as a child process and look after it: what a launcher's
function body does (modal_app.py), where the launcher itself cannot be the trainer.

Lightning's DDP starts its extra processes by running the command line again, so the
trainer must be a real command line, not a function inside the launcher's process. The
supervisor forwards a preemption signal to it (as SIGTERM: the trainer saves a
checkpoint and stops), and calls `on_checkpoint` whenever a checkpoint file changes, so
the storage holding them can be committed while training goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

TRAIN_PYTHON_ENV = "CONDENSE_TRAIN_PYTHON"


def launch_command(
    job: str, checkpoint_dir: Path, overrides: list[str], hub_repo: str = ""
) -> list[str]:
    """The node entry's command line; the interpreter is $CONDENSE_TRAIN_PYTHON if set
    (the one with torch, when the launcher's own has none), else this one."""
    python = os.environ.get(TRAIN_PYTHON_ENV) or sys.executable
    command = [python, "-m", "launch", "run", job, "--checkpoint-dir", str(checkpoint_dir)]
    if hub_repo:
        command += ["--hub-repo", hub_repo]
    return command + overrides


def supervise(
    command: list[str],
    checkpoint_dir: Path,
    on_checkpoint: Callable[[], None] = lambda: None,
    env: dict[str, str] | None = None,
    poll_s: float = 10.0,
    grace_s: float = 60.0,
) -> int:
    """Run `command` to its end and return its exit status, as a shell gives it (128 + N
    for a child a signal N ended); SIGTERM and SIGINT are passed on to it as SIGTERM, and
    `on_checkpoint` runs after each change of a checkpoint file and once at the end. When
    an exception interrupts the wait, the child is stopped (SIGTERM, SIGKILL after
    `grace_s`) before it propagates."""
    child = subprocess.Popen(command, env={**os.environ, **(env or {})})
    forward = _forward_to(child)
    done = threading.Event()
    watcher = threading.Thread(
        target=_watch, args=(checkpoint_dir / "checkpoints", on_checkpoint, done, poll_s)
    )
    watcher.start()
    try:
        status = child.wait()
    except BaseException:
        # Modal cancels an input (`modal app stop`, Ctrl-C on `modal run`) by raising
        # InputCancellation here; left running, the trainer would hold the GPUs and write
        # the run dir beside the next input that this warm container takes.
        _stop(child, grace_s)
        raise
    finally:
        done.set()
        watcher.join()
        forward()
        on_checkpoint()
    return shell_status(status)


def shell_status(returncode: int) -> int:
    """A child's exit status as a shell gives it: Popen's -N for a child a signal N ended is
    128 + N (a trainer a SIGTERM ended while its models loaded read "status -15", where
    every other stop by SIGTERM is 143)."""
    return 128 - returncode if returncode < 0 else returncode


def _stop(child: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM (the trainer saves a checkpoint and exits), then SIGKILL after `grace_s`."""
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _forward_to(child: subprocess.Popen) -> Callable[[], None]:
    """Install handlers that pass SIGTERM/SIGINT to `child`; returns what restores them."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # handlers can only be set there; the child gets signals itself
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda *_: child.send_signal(signal.SIGTERM))

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _watch(
    folder: Path, on_change: Callable[[], None], done: threading.Event, poll_s: float
) -> None:
    seen = _stamps(folder)
    while not done.wait(poll_s):
        now = _stamps(folder)
        if now != seen:
            seen = now
            try:
                on_change()
            except Exception as err:  # noqa: BLE001 - any failure: the next change tries again
                # A Modal commit reloads the volume afterwards, which fails while the
                # trainer holds files open there (W&B's run files): one failed commit
                # must not end the commits of every later checkpoint.
                print(f"launch: checkpoint commit failed: {err}", file=sys.stderr, flush=True)


def _stamps(folder: Path) -> dict[str, int]:
    stamps = {}
    for path in folder.glob("*.ckpt") if folder.is_dir() else ():
        try:
            stamps[path.name] = path.stat().st_mtime_ns
        except FileNotFoundError:  # replaced between listing and looking
            continue
    return stamps
