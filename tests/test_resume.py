"""Resume: a stopped run continues with the batches, weights and randomness an uninterrupted
run would have had."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from condense.batches import LengthGroupedBatchSampler, ResumableDataLoader
from condense.checkpoint_io import AtomicCheckpointIO, BestAndLastCheckpoint
from condense.preemption import SaveOnSigterm
from tests.conftest import job_under_test, tiny_job
from tests.test_launch import _launch, _wait_for

ROOT = Path(__file__).resolve().parents[1]

BATCHES_PER_EPOCH = 5
MAX_STEPS = 3 * BATCHES_PER_EPOCH + 2  # into a fourth epoch


class Recorder(L.LightningModule):
    """A one-weight model that records which samples each step trained on."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []
        self.validated: list[tuple[int, int]] = []  # (global step, batch index)
        self.log_steps: list[int] = []  # the loggers' step of each training batch

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch.tolist())
        self.log_steps.append(self.trainer.fit_loop.epoch_loop._batches_that_stepped)
        return (self.weight * batch.float().mean() - 1).pow(2)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.validated.append((self.global_step, batch_idx))
        self.log("val_loss", self.weight.sum().detach() + 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_resume_at_another_batch_size_goes_on_from_the_next_epoch(caplog):
    lengths = [random.Random(i).randint(1, 50) for i in range(32)]

    def loader(batch_size: int) -> ResumableDataLoader:
        return ResumableDataLoader(list(range(32)), LengthGroupedBatchSampler(lengths, batch_size))

    fours = loader(4)
    it = iter(fours)
    trained = [i for _ in range(3) for i in next(it).tolist()]
    # In batches of 2, the rest of epoch 0 would repeat some of these 12 samples and leave
    # out as many others; epoch 1 is whole, in its own order.
    twos = loader(2)
    twos.load_state_dict(fours.state_dict())
    assert "goes on from the start of the next epoch (1); the rest of epoch 0" in caplog.text
    resumed = [b.tolist() for b in twos]
    following = loader(2)
    following.load_state_dict({"epoch": 1, "batches_trained": 0, "batch_size": 2})
    assert resumed == [b.tolist() for b in following]
    assert sorted(i for b in resumed for i in b) == list(range(32))
    assert len(set(trained)) == 12
    # Saved at an epoch's end, nothing of it is left out, and the message does not say so.
    caplog.clear()
    loader(2).load_state_dict({"epoch": 0, "batches_trained": 8, "batch_size": 4})
    assert "next epoch (1)" in caplog.text and "the rest of epoch" not in caplog.text
    # At the same size, or saved before the size was kept, the epoch goes on where it was.
    same = loader(4)
    same.load_state_dict({"epoch": 0, "batches_trained": 3})
    assert sorted(i for b in same for i in b.tolist()) == sorted(set(range(32)) - set(trained))


def _loader(num_replicas: int = 1, rank: int = 0) -> ResumableDataLoader:
    lengths = [random.Random(i).randint(1, 50) for i in range(4 * BATCHES_PER_EPOCH)]
    sampler = LengthGroupedBatchSampler(lengths, 4, seed=3, window=2)
    return ResumableDataLoader(list(range(len(lengths))), sampler)


class StopAt(Callback):
    """Stops the run after `step` optimizer steps by SIGTERM (which SaveOnSigterm answers
    with last.ckpt), or as a SIGKILL does one step after the checkpoint of the validation
    at `step` (an exception that saves nothing)."""

    def __init__(self, step: int, how: str):
        self.step, self.how = step, how

    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == self.step and self.how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler sets its flag
        if trainer.global_step == self.step + 1 and self.how == "sigkill":
            raise KeyboardInterrupt  # one step past the checkpoint; nothing more is saved


def _fit(
    tmp: Path,
    callbacks: list[Callback],
    val_every: int,
    ckpt_path=None,
    val_batches: int = 1,
    module: Recorder | None = None,
    max_steps: int = MAX_STEPS,
) -> Recorder:
    module = module or Recorder()
    trainer = L.Trainer(
        max_steps=max_steps,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=val_batches,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            BestAndLastCheckpoint(dirpath=tmp, save_last=True, monitor="val_loss", save_top_k=1),
            SaveOnSigterm(tmp / "last.ckpt"),
            *callbacks,
        ],
        default_root_dir=tmp,
    )
    try:
        # Validation as in training: the same batches every time, in order.
        val = torch.utils.data.DataLoader(list(range(4 * val_batches)), batch_size=4)
        trainer.fit(module, _loader(), val, ckpt_path=ckpt_path, weights_only=True)
    except (SystemExit, KeyboardInterrupt):
        pass
    return module


# Mid-epoch, the last batch of an epoch, the first of the next, and deep into the run.
@pytest.mark.parametrize("step", [2, BATCHES_PER_EPOCH, BATCHES_PER_EPOCH + 1, 13])
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_resumed_run_trains_on_the_batches_an_uninterrupted_one_would(tmp_path, step, how):
    straight = _fit(tmp_path / "straight", [], val_every=step).seen
    assert len(straight) == MAX_STEPS
    assert straight[:BATCHES_PER_EPOCH] != straight[BATCHES_PER_EPOCH : 2 * BATCHES_PER_EPOCH]

    folder = tmp_path / how
    stopped = _fit(folder, [StopAt(step, how)], val_every=step)
    assert len(stopped.seen) == step + (how == "sigkill")  # the killed step ran, unsaved
    resumed = _fit(folder, [], val_every=step, ckpt_path=folder / "last.ckpt")
    assert stopped.seen[:step] + resumed.seen == straight
    # The loggers' steps too: a SIGTERM just after a validation resumed one step high.
    assert stopped.log_steps[:step] + resumed.log_steps == list(range(MAX_STEPS))


class FinalValidation(Recorder):
    """Validates at max_steps as CondenseModule does (off the interval too)."""

    def on_train_batch_end(self, *_):
        if self.trainer.global_step >= self.trainer.max_steps:
            self.trainer.should_stop = True


def test_more_steps_after_a_final_validation_log_at_the_steps_that_follow(tmp_path):
    # Finished at step 3 with a final validation off the interval of 2, then given 6:
    # the rows after it were one step low, step 2 twice (Lightning's count of batches
    # that stepped is saved before it counts the batch it validated after).
    first = _fit(tmp_path, [], val_every=2, module=FinalValidation(), max_steps=3)
    assert first.validated[-1] == (3, 0)
    more = _fit(tmp_path, [], val_every=2, ckpt_path=tmp_path / "last.ckpt", max_steps=6)
    assert first.log_steps + more.log_steps == list(range(6))


class StopInValidation(Callback):
    """SIGTERM after the first batch of the validation at `step` (a preemption mid-way)."""

    def __init__(self, step: int):
        self.step = step

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, *_):
        if trainer.global_step == self.step and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_validation_cut_by_sigterm_runs_again_whole_on_resume(tmp_path):
    straight = _fit(tmp_path / "straight", [], val_every=4, val_batches=3)
    folder = tmp_path / "stopped"
    stopped = _fit(folder, [StopInValidation(8)], val_every=4, val_batches=3)
    assert stopped.validated[-1] == (8, 0)  # cut after its first batch
    resumed = _fit(folder, [], val_every=4, ckpt_path=folder / "last.ckpt", val_batches=3)
    # It used to go on training past step 8's validation, leaving it out for good (and
    # with it the best checkpoint it might have made).
    assert resumed.validated == [v for v in straight.validated if v[0] >= 8]
    assert stopped.seen + resumed.seen == straight.seen
    assert stopped.log_steps + resumed.log_steps == straight.log_steps


def test_after_a_rerun_validation_a_later_checkpoint_resumes_without_another(tmp_path):
    straight = _fit(tmp_path / "straight", [], val_every=2, val_batches=3)
    folder = tmp_path / "stopped"
    _fit(folder, [StopInValidation(6)], val_every=2, val_batches=3)
    # Resumed, it reruns step 6's validation and dies after step 8's, within the same
    # epoch; resumed from the checkpoint of step 8's validation, it goes on training.
    at_validation = ModelCheckpoint(
        dirpath=tmp_path, filename="at-validation", save_on_train_epoch_end=False
    )
    again = [at_validation, StopAt(8, "sigkill")]
    _fit(folder, again, val_every=2, ckpt_path=folder / "last.ckpt", val_batches=3)
    saved = tmp_path / "at-validation.ckpt"
    assert torch.load(saved, weights_only=False)["global_step"] == 8
    resumed = _fit(folder, [], val_every=2, ckpt_path=saved, val_batches=3)
    assert resumed.validated == [v for v in straight.validated if v[0] >= 10]


def test_a_final_validation_cut_by_sigterm_runs_again_on_resume_and_trains_nothing(tmp_path):
    straight = _fit(tmp_path / "straight", [], val_every=MAX_STEPS, val_batches=3)
    assert straight.validated == [(MAX_STEPS, i) for i in range(3)]
    folder = tmp_path / "stopped"
    stopped = _fit(folder, [StopInValidation(MAX_STEPS)], val_every=MAX_STEPS, val_batches=3)
    assert stopped.validated == [(MAX_STEPS, 0)]
    resumed = _fit(folder, [], val_every=MAX_STEPS, ckpt_path=folder / "last.ckpt", val_batches=3)
    # Lightning's fit loop is done at max_steps before it looks at a cut validation, so
    # this one used to be lost, and with it the best checkpoint it would have made.
    assert resumed.validated == straight.validated and resumed.seen == []
    best = list(folder.glob("epoch=*.ckpt"))  # ModelCheckpoint's top-1
    assert len(best) == 1 and torch.load(best[0], weights_only=False)["global_step"] == MAX_STEPS
    # The run is over: resumed again, it neither trains nor validates.
    again = _fit(folder, [], val_every=MAX_STEPS, ckpt_path=folder / "last.ckpt", val_batches=3)
    assert again.validated == [] and again.seen == []


def test_a_final_validation_off_the_interval_cut_by_sigterm_reruns_and_trains_nothing(tmp_path):
    # Lightning reran a cut validation only where its interval test passed at the restart:
    # off it, it trained step 8 of max_steps 7 and validated there.
    def fit(folder, callbacks, ckpt_path=None):
        module = FinalValidation()
        _fit(folder, callbacks, 3, ckpt_path, val_batches=3, module=module, max_steps=7)
        return module

    straight = fit(tmp_path / "straight", [])
    assert [v for v in straight.validated if v[0] == 7] == [(7, 0), (7, 1), (7, 2)]
    folder = tmp_path / "stopped"
    stopped = fit(folder, [StopInValidation(7)])
    assert stopped.validated[-1] == (7, 0)
    resumed = fit(folder, [], ckpt_path=folder / "last.ckpt")
    assert resumed.seen == [] and resumed.validated == [(7, 0), (7, 1), (7, 2)]
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 7


def test_a_cut_validation_reruns_though_the_interval_changed(tmp_path):
    straight = _fit(tmp_path / "straight", [], val_every=4, val_batches=3)
    folder = tmp_path / "stopped"
    _fit(folder, [StopInValidation(8)], val_every=4, val_batches=3)
    # Resumed with validation every 3 steps: 8 is off it, and the cut one was dropped.
    resumed = _fit(folder, [], val_every=3, ckpt_path=folder / "last.ckpt", val_batches=3)
    assert resumed.validated[:3] == [(8, 0), (8, 1), (8, 2)]
    assert [v[0] for v in resumed.validated[3::3]] == [9, 12, 15]
    assert resumed.log_steps == straight.log_steps[8:]


class Worsening(Recorder):
    """Validation loss = the step: only the first validation is a best."""

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_loss", torch.tensor(float(self.global_step)))


def test_checkpoints_keep_the_last_validation_loss_not_only_the_best(tmp_path):
    _fit(tmp_path, [], val_every=4, module=Worsening())  # validates at 4, 8, 12, 16
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    (state,) = [v for k, v in saved.items() if k.startswith("BestAndLastCheckpoint")]
    assert float(state["best_model_score"]) == 4.0 and float(state["last_score"]) == 16.0
    resumed = BestAndLastCheckpoint(dirpath=tmp_path, monitor="val_loss")
    resumed.load_state_dict(state)
    assert float(resumed.last_score) == 16.0


def test_a_run_folder_moved_elsewhere_keeps_its_best_score_on_resume(tmp_path):
    _fit(tmp_path / "a", [], val_every=4, module=Worsening())  # best 4.0, at step 4
    (tmp_path / "a").rename(tmp_path / "b")
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["callbacks"]
    (state,) = [v for k, v in saved.items() if k.startswith("BestAndLastCheckpoint")]
    moved = BestAndLastCheckpoint(dirpath=tmp_path / "b", monitor="val_loss")
    moved.load_state_dict(state)
    # Forgotten, the next validation (worse: 20.0) would have overwritten best.ckpt.
    assert float(moved.best_model_score) == 4.0
    best = Path(moved.best_model_path)
    assert best.parent == tmp_path / "b" and best.is_file()
    assert list(moved.best_k_models) == [str(best)]
    # Another folder, its best checkpoint not there: a best of its own, as Lightning does.
    elsewhere = BestAndLastCheckpoint(dirpath=tmp_path / "c", monitor="val_loss")
    elsewhere.load_state_dict(state)
    assert elsewhere.best_model_score is None


def test_position_is_kept_across_a_change_in_the_number_of_processes():
    lengths = [random.Random(i).randint(1, 50) for i in range(32)]  # 8 batches of 4

    def loader(replicas: int, rank: int) -> ResumableDataLoader:
        sampler = LengthGroupedBatchSampler(lengths, 4, seed=3, num_replicas=replicas, rank=rank)
        return ResumableDataLoader(list(range(32)), sampler)

    whole_epoch = [b.tolist() for b in loader(1, 0)]
    alone = loader(1, 0)
    it = iter(alone)
    trained = [next(it).tolist() for _ in range(4)]
    assert trained == whole_epoch[:4]
    assert alone.state_dict() == {"epoch": 0, "batches_trained": 4, "batch_size": 4}
    # Resumed on two processes: between them, exactly the four batches not trained yet.
    rest = []
    for rank in (0, 1):
        resumed = loader(2, rank)
        resumed.load_state_dict(alone.state_dict())
        rest += [b.tolist() for b in resumed]
    assert sorted(rest) == sorted(whole_epoch[4:])


def _train(job: Path, run_dir: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    env.pop("WANDB_SERVICE", None)  # see tests/test_launch.py::_launch
    # Its stdout buffered, as into a user's log file (and in CI): the order of the lines in
    # the log is then the program's own, not one that unbuffered streams would give.
    env.pop("PYTHONUNBUFFERED", None)
    command = ["condense", "train", "--config", str(job), "--run-dir", str(run_dir)]
    return subprocess.Popen(
        [sys.executable, "-m", *command], cwd=ROOT, env=env, stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_ctrl_c_stops_with_a_checkpoint_and_the_next_run_resumes_there(tiny_pair, tmp_path):
    # Lightning stops at once on Ctrl-C and saves nothing: everything since the last
    # validation was lost, the whole run when that was far off.
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml", max_steps=2000, val_every_n_steps=1000)
    run, log = tmp_path / "run", tmp_path / "run.log"
    proc = _train(job, run, log)
    _wait_for(lambda: _training(log), proc, log)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 128 + signal.SIGINT, log.read_text()[-3000:]
    step = _checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 0 < step < 1000  # saved where it stopped, before any validation could
    assert f"Ctrl-C: saved step {step}" in log.read_text()
    # The last words, as a user reads them: the bars that were left open used to be drawn
    # again after them, at exit.
    last = log.read_text().rstrip().splitlines()[-1]
    assert last.startswith(f"condense: Ctrl-C: saved step {step} to "), last
    assert "`weights_only` was not set" not in log.read_text()  # Lightning's, on the save
    assert "Received SIGTERM" not in log.read_text()  # Lightning's too: not what was sent
    # The same job, to end two steps later.
    tiny_job(*tiny_pair, job, max_steps=step + 2, val_every_n_steps=1000)
    _finished(_train(job, run, tmp_path / "resumed.log"), tmp_path / "resumed.log")
    assert f"resumed at step {step})" in (tmp_path / "resumed.log").read_text()
    # Lightning warns of a checkpoint folder that holds checkpoints: a resume's always does.
    assert "exists and is not empty" not in (tmp_path / "resumed.log").read_text()


def test_a_ctrl_c_that_stops_at_once_exits_as_ctrl_c(tiny_pair, tmp_path, monkeypatch, caplog):
    """A second Ctrl-C in the middle of a step (or a first one in the validation before
    training) reached Lightning as a KeyboardInterrupt, which it ends with exit status 1,
    as for an error, and no word of condense's."""
    from condense.__main__ import main
    from condense.module import CondenseModule
    from launch.run import main as launch_run

    step = CondenseModule.training_step

    def interrupted(self, batch, batch_idx):
        if batch_idx == 2:
            raise KeyboardInterrupt
        return step(self, batch, batch_idx)

    monkeypatch.setattr(CondenseModule, "training_step", interrupted)
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml", max_steps=10, val_every_n_steps=10)
    # `condense train`, and a launcher's node, where status 1 is retried as a crash.
    for name, command in [
        ("train", lambda: main(["train", "--config", str(job), "--run-dir", str(tmp_path / "a")])),
        ("launch", lambda: launch_run([str(job), "--checkpoint-dir", str(tmp_path / "b")])),
    ]:
        before, environ = signal.getsignal(signal.SIGINT), dict(os.environ)
        caplog.clear()
        try:
            with pytest.raises(SystemExit) as exit_:
                command()
        finally:
            signal.signal(signal.SIGINT, before)  # Lightning ignores Ctrl-C after its own
            os.environ.clear()  # the launcher sets the node's variables (caches, ranks)
            os.environ.update(environ)
        assert exit_.value.code == 128 + signal.SIGINT, name
        assert "condense: Ctrl-C: stopped at once, without saving this step" in caplog.text


def test_each_run_starts_with_sigterms_exit_status():
    """A Ctrl-C of an earlier run in the process left 130 set until the next fit began: a
    SIGTERM in the next run's first validation, before that, exited 130."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from condense import preemption

    preemption.stop_exit_code, preemption.interrupted = 128 + signal.SIGINT, True
    with pytest.raises(SystemExit) as exit_, preemption.stop_statuses():
        raise SIGTERMException
    assert exit_.value.code == preemption.SIGTERM_EXIT_CODE
    with pytest.raises(SystemExit) as exit_, preemption.stop_statuses():
        raise SystemExit(2)  # a config error is not a stop
    assert exit_.value.code == 2


def test_each_fit_starts_with_sigterms_exit_status_and_gives_ctrl_c_back(tmp_path):
    # The exit status a Ctrl-C set (130) outlived its fit: a later SIGTERM stop in the same
    # process would have exited 130 too.
    from condense import preemption

    callback = preemption.SaveOnSigterm(tmp_path / "last.ckpt")
    before = signal.getsignal(signal.SIGINT)
    lightnings = signal.signal(signal.SIGTERM, lambda *_: None)  # stands for Lightning's
    try:
        callback.on_train_start(None, None)
        assert signal.getsignal(signal.SIGINT) == callback._on_ctrl_c
        callback._on_ctrl_c(signal.SIGINT, None)
        assert preemption.stop_exit_code == 128 + signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the second
        callback.teardown(None, None, "fit")
        callback.on_train_start(None, None)  # the next fit in this process
        assert preemption.stop_exit_code == preemption.SIGTERM_EXIT_CODE
        callback.teardown(None, None, "fit")
        assert signal.getsignal(signal.SIGINT) == before
    finally:
        signal.signal(signal.SIGTERM, lightnings)
        signal.signal(signal.SIGINT, before)


def _finished(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_killed_and_resumed_run_ends_with_the_same_weights_bit_for_bit(tiny_pair, tmp_path):
    # 48 training samples in batches of 4: 12 batches an epoch. The kill comes after the
    # checkpoint of step 18, half-way through the second epoch; the resumed half crosses
    # into the third. LoRA dropout is on, so the random state has to resume too.
    n = 18
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml", max_steps=2 * n, val_every_n_steps=n)
    spec = yaml.safe_load(job.read_text())
    spec["model"]["lora_dropout"] = 0.1
    job.write_text(yaml.safe_dump(spec))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    last = killed / "checkpoints" / "last.ckpt"

    started = time.monotonic()
    straight_proc = _train(job, straight, tmp_path / "straight.log")
    proc = _train(job, killed, tmp_path / "killed.log")
    while not last.is_file():
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=60)
    state = _checkpoint(last)
    assert state["global_step"] == n
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches_trained": n - 12, "batch_size": 4}
    ]
    # metrics.csv is written at every step: the killed process's rows are all there.
    with (killed / "metrics.csv").open() as f:
        logged = {int(row["step"]) for row in csv.DictReader(f) if row["train_loss"]}
    assert set(range(n)) <= logged
    _finished(_train(job, killed, tmp_path / "resumed.log"), tmp_path / "resumed.log")
    _finished(straight_proc, tmp_path / "straight.log")
    took = time.monotonic() - started

    a, b = (_checkpoint(run / "checkpoints" / "last.ckpt") for run in (straight, killed))
    assert a["global_step"] == b["global_step"] == 2 * n
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [
        k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])
    ]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]} ({took:.0f} s)"
    # The steps the killed process logged after its checkpoint are logged once, not twice.
    assert _logged_train_steps(killed) == _logged_train_steps(straight)


def _logged_train_steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row["train_loss"]]


def _training(log: Path) -> bool:
    """Whether the progress bar shows training: "Epoch 0: ..." on a fresh start, and
    "Training: ..." when resumed mid-epoch (the resumed loader's length is not known)."""
    text = log.read_text()
    return "Epoch " in text or "Training: " in text


def _loadable(folder: Path) -> dict[str, int]:
    """Global step of every checkpoint in `folder`; each must load (weights only)."""
    return {p.name: _checkpoint(p)["global_step"] for p in sorted(folder.glob("*.ckpt"))}


@pytest.mark.parametrize("kind", ["tiny", "test"])
def test_kills_at_random_points_lose_nothing(kind, tiny_pair, tmp_path):
    # Few validations: with W&B on, each one also generates and logs a table, which costs
    # far more than the tiny steps. A kill lands at most ~15 tiny steps into training, or
    # within the first step or two of the test job's: max_steps stays above what the kills
    # can reach, so the last run always has steps to train.
    # The test job kills 5 times, the tiny one 10: each kill of the test job costs a start
    # of the 135M pair (~10 s), and the first 5 draws of Random(26) already take every path
    # the 10 do: SIGTERM while training, in the fresh run and in a resumed one (last.ckpt
    # saved over its own), SIGTERM and SIGKILL while starting, SIGKILL while training.
    kills, max_steps, val_every = (10, 120, 20) if kind == "tiny" else (5, 12, 4)
    job, extra = job_under_test(kind, tiny_pair, tmp_path, max_steps, val_every, wandb="offline")
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    rng = random.Random(26)
    kinds, reached = [], 0
    for i in range(kills):
        log = tmp_path / f"run{i}.log"
        proc = _launch(job, run, log, extra)
        how = rng.choice([signal.SIGTERM, signal.SIGKILL])
        if rng.random() < 0.2:  # while it starts: loading, the first validation
            time.sleep(rng.uniform(0, 4))
        else:  # once it trains
            _wait_for(lambda log=log: _training(log), proc, log)
            time.sleep(rng.uniform(0, 0.5))
        assert proc.poll() is None, f"kill {i} came too late: the job had finished"
        proc.send_signal(how)
        status = proc.wait(timeout=120)
        kinds.append(how.name)
        assert status in ((143, -signal.SIGTERM) if how == signal.SIGTERM else (-signal.SIGKILL,))
        steps = _loadable(checkpoints) if checkpoints.is_dir() else {}
        if status == 143 and _training(log):  # stopped by Lightning while training
            assert f"SIGTERM: saved step {steps['last.ckpt']}" in log.read_text()
        assert set(steps) <= {"best.ckpt", "last.ckpt"}  # no last-v1.ckpt beside them
        assert steps.get("last.ckpt", 0) >= reached  # never goes back
        reached = steps.get("last.ckpt", 0)

    log = tmp_path / "final.log"
    assert _launch(job, run, log, extra).wait(timeout=300) == 0, log.read_text()[-3000:]
    assert 0 < reached < max_steps and {"SIGTERM", "SIGKILL"} <= set(kinds)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == max_steps
    assert _loadable(checkpoints)["last.ckpt"] == max_steps
    # One W&B run: every process that got as far as W&B logged under the same id.
    run_id = (run / "wandb_run_id").read_text()
    assert summary["wandb_run_id"] == run_id
    assert {r.name.rsplit("-", 1)[1] for r in (run / "wandb").glob("offline-run-*")} == {run_id}
