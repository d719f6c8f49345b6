"""The run folder: what a run resumes from, and that a fresh run in a used folder neither
mixes with the earlier run nor loses it."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
import torch

from condense.config import ConfigError
from condense.run_dir import (
    RUN_DIR_ENV,
    continues_run,
    record_start,
    resolve_resume,
    set_aside_earlier_run,
    started_from,
)
from condense.samples import DataError
from condense.training import train
from tests.conftest import tiny_config


def test_resume_ignores_a_leftover_of_a_killed_save(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".last.ckpt.tmp-12345").write_bytes(b"partial")
    assert resolve_resume("auto", tmp_path) is None


GIVE = r"is a folder: give a checkpoint file in it \("


@pytest.mark.parametrize(
    "given, message",
    [
        ("old", GIVE + r".*old/checkpoints/last.ckpt, say\)$"),
        ("old/checkpoints", GIVE + r".*old/checkpoints/last.ckpt, say\)$"),
        ("best", GIVE + r".*best/checkpoints/best.ckpt, say\)$"),
        (
            "old/artifact",
            r"is an artifact, not a checkpoint: .* \(.*old/checkpoints/last.ckpt, say",
        ),
        (
            "empty",
            r"is a folder holding no checkpoint \(a run folder's is checkpoints/last.ckpt\)$",
        ),
    ],
)
def test_resume_names_a_folder_given_for_a_checkpoint(given, message, tmp_path):
    """A run folder was told to give FOLDER/last.ckpt, which is in FOLDER/checkpoints/,
    and an artifact folder, which holds no checkpoint at all, the same."""
    for name in (
        "old/checkpoints/last.ckpt",
        "old/checkpoints/best.ckpt",
        "best/checkpoints/best.ckpt",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "old" / "artifact").mkdir()
    (tmp_path / "old" / "artifact" / "condense_config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"^--resume {tmp_path / given} {message}"):
        resolve_resume(str(tmp_path / given), tmp_path / "run")


def test_a_run_dir_that_cannot_be_made_is_named_before_the_models_load(
    tiny_pair, tmp_path, monkeypatch
):
    import condense.training

    monkeypatch.setattr(condense.training, "build", lambda *_: pytest.fail("models loaded"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"run_dir .*file/run: cannot make it \(.*file is a file"):
        train(tiny_config(*tiny_pair, tmp_path / "file" / "run"))


def test_a_run_dir_that_another_run_made_meanwhile_is_refused_before_its_files_move(
    tiny_pair, tmp_path, monkeypatch
):
    """Two runs started before their folder existed (the same runs/NAME-TIME in one second,
    or a new --run-dir): the second moved the first one's config.yaml and metrics.csv
    aside, wrote its own, and only then was refused."""
    import condense.training
    from condense.run_dir import RunDirLock

    run, build = tmp_path / "run", condense.training.build
    first = RunDirLock(run)

    def the_first_starts_meanwhile(*args):
        built = build(*args)
        run.mkdir()
        first.take()
        (run / "config.yaml").write_text("the first run's")
        return built

    monkeypatch.setattr(condense.training, "build", the_first_starts_meanwhile)
    try:
        with pytest.raises(ConfigError, match=r"run_dir .*/run is in use by another condense"):
            train(tiny_config(*tiny_pair, run, max_steps=2))
    finally:
        first.release()
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    assert (run / "config.yaml").read_text() == "the first run's"


@pytest.mark.parametrize(
    ("environ", "first"),
    [
        ({}, True),
        ({"LOCAL_RANK": "1"}, False),  # a process Lightning started
        ({"NODE_RANK": "1"}, False),  # another node of `python -m launch run`
        ({"RANK": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
        ({"RANK": "3", "LOCAL_RANK": "0"}, False),  # torchrun: RANK is the global one
        ({"SLURM_PROCID": "1"}, False),  # srun's tasks
        ({"SLURM_PROCID": "0"}, True),
    ],
)
def test_only_the_jobs_first_process_counts_as_rank_zero(environ, first, monkeypatch):
    """srun's tasks all counted as rank 0: each took the run dir's lock (the second was
    refused, and the first waited for it), and a finished run's each one published."""
    from condense.run_dir import launched_as_rank_zero

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert launched_as_rank_zero() is first


def test_a_run_dir_in_use_by_another_train_is_refused_and_left_alone(tiny_pair, tmp_path):
    """A second train in the same folder resumed from the first one's checkpoints while it
    ran, and both wrote the same files: each step logged twice, without a word."""
    from condense.run_dir import RunDirLock

    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=2)
    train(cfg)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    other = RunDirLock(tmp_path / "run")  # the first one, still training
    other.take()
    try:
        with pytest.raises(ConfigError, match=r"run_dir .*/run is in use by another condense"):
            train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=4, resume="never"))
    finally:
        other.release()
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before
    # Once it has ended, the next goes on, and clears what a killed write left.
    (tmp_path / "run" / ".summary.json.tmp-99999").write_text("{")
    assert train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=3))["steps"] == 3
    assert not list((tmp_path / "run").glob(".*.tmp-*"))


def test_a_run_dir_it_cannot_write_in_is_refused_before_the_models_load(
    tiny_pair, tmp_path, monkeypatch
):
    """An immutable (or another user's) checkpoints/ was found at the first save, after a
    validation interval of training. The stand-in refuses as such a folder does: root
    writes through a chmod."""
    import tempfile

    import condense.training

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    mkstemp = tempfile.mkstemp

    def refuse_checkpoints(*args, dir, **kwargs):
        if Path(dir).name == "checkpoints":
            raise PermissionError(1, "Operation not permitted")
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse_checkpoints)
    monkeypatch.setattr(condense.training, "build", lambda *_: pytest.fail("models loaded"))
    with pytest.raises(
        ConfigError, match=r"run_dir .*/run: cannot write in .*/run/checkpoints \(Operation not"
    ):
        train(tiny_config(*tiny_pair, tmp_path / "run"))
    assert os.listdir(tmp_path / "run" / "checkpoints") == []


def test_an_empty_or_unused_folder_has_nothing_to_set_aside(tmp_path):
    assert set_aside_earlier_run(tmp_path / "missing") is None
    (tmp_path / "notes.txt").write_text("mine")
    assert set_aside_earlier_run(tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_set_aside_moves_a_runs_files_whole_and_nothing_else(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (tmp_path / "metrics.csv").write_text("step,train_loss\n0,1.0\n")
    (tmp_path / "wandb_run_id").write_text("abcd1234")
    (tmp_path / "notes.txt").write_text("mine")
    aside = set_aside_earlier_run(tmp_path)
    assert aside.parent == tmp_path and aside.name.startswith("earlier-")
    assert (aside / "checkpoints" / "last.ckpt").read_bytes() == b"weights"
    assert not any((tmp_path / "checkpoints").iterdir())  # emptied, kept: launchers watch it
    assert (aside / "metrics.csv").read_text() == "step,train_loss\n0,1.0\n"
    assert (aside / "wandb_run_id").read_text() == "abcd1234"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", aside.name, "notes.txt"]
    assert set_aside_earlier_run(tmp_path) is None  # the earlier-* folder is not a run


def _steps(metrics):
    with metrics.open(newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row["train_loss"]]


def test_a_move_cut_short_is_finished_into_the_same_folder(tmp_path, monkeypatch):
    import condense.run_dir

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (tmp_path / "metrics.csv").write_text("step\n0\n")
    real_move, moved = condense.run_dir._move, []

    def killed_after_one(source, target, keep_folder=False):
        if moved:
            raise KeyboardInterrupt  # the process stops here
        moved.append(source.name)
        real_move(source, target, keep_folder)

    monkeypatch.setattr(condense.run_dir, "_move", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        set_aside_earlier_run(tmp_path)
    monkeypatch.undo()
    aside = set_aside_earlier_run(tmp_path)  # the next fresh start
    assert [p.name for p in tmp_path.glob("earlier-*")] == [aside.name]
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoints", "metrics.csv"]
    assert (aside / "checkpoints" / "last.ckpt").read_bytes() == b"weights"


def test_only_a_run_dirs_own_checkpoint_continues_its_files(tmp_path):
    own = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert continues_run(str(own), tmp_path / "run")
    assert not continues_run(
        str(tmp_path / "other" / "checkpoints" / "last.ckpt"), tmp_path / "run"
    )
    assert not continues_run(None, tmp_path / "run")


def test_a_fresh_run_in_a_used_folder_keeps_the_earlier_run_apart(tiny_pair, tmp_path):
    run = tmp_path / "run"
    first = train(tiny_config(*tiny_pair, run, max_steps=4, wandb="offline"))
    second = train(
        tiny_config(*tiny_pair, run, max_steps=2, resume="never", seed=1, wandb="offline")
    )
    (earlier,) = run.glob("earlier-*")
    assert _steps(earlier / "metrics.csv") == [0, 1, 2, 3]
    assert _steps(run / "metrics.csv") == [0, 1]  # the new run's own rows only
    assert "seed: 0" in (earlier / "config.yaml").read_text()
    assert "seed: 1" in (run / "config.yaml").read_text()
    assert (earlier / "checkpoints" / "last.ckpt").is_file()
    assert (earlier / "artifact").is_dir()
    assert (earlier / "wandb_run_id").read_text() == first["wandb_run_id"]
    assert (run / "wandb_run_id").read_text() == second["wandb_run_id"] != first["wandb_run_id"]

    # Resuming the earlier run's checkpoint here carries its training on, in files of its own.
    resumed = str(earlier / "checkpoints" / "last.ckpt")
    third = train(tiny_config(*tiny_pair, run, max_steps=6, resume=resumed, wandb="offline"))
    assert third["steps"] == 6 and len(list(run.glob("earlier-*"))) == 2
    assert _steps(run / "metrics.csv") == [4, 5]
    assert third["wandb_run_id"] not in (first["wandb_run_id"], second["wandb_run_id"])

    # The same command again continues the run it started: finished, it trains nothing.
    again = train(tiny_config(*tiny_pair, run, max_steps=6, resume=resumed, wandb="offline"))
    assert again == third and len(list(run.glob("earlier-*"))) == 2
    more = train(tiny_config(*tiny_pair, run, max_steps=7, resume=resumed, wandb="offline"))
    assert more["resumed_at_step"] == 6 and _steps(run / "metrics.csv") == [4, 5, 6]
    assert more["wandb_run_id"] == third["wandb_run_id"]

    # A checkpoint already at max_steps would start a run that trains nothing, writes no
    # checkpoint and no artifact: refused before anything is written.
    with pytest.raises(ConfigError, match="at step 4 and max_steps is 4: nothing to train"):
        train(tiny_config(*tiny_pair, tmp_path / "new", max_steps=4, resume=resumed))
    assert not (tmp_path / "new").exists()


def test_a_checkpoint_path_continues_the_run_that_started_from_it(tmp_path):
    other = tmp_path / "other" / "last.ckpt"
    other.parent.mkdir()
    torch.save({"global_step": 1000}, other)
    own = tmp_path / "run" / "checkpoints" / "last.ckpt"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"weights")
    assert resolve_resume(str(other), tmp_path / "run") == str(other)  # another run's folder
    record_start(tmp_path / "run", str(other), 1000)
    assert resolve_resume(str(other), tmp_path / "run") == str(own)
    # The other run trained on and wrote its last.ckpt again: that is a new start.
    torch.save({"global_step": 3000}, other)
    assert resolve_resume(str(other), tmp_path / "run") == str(other)
    torch.save({"global_step": 1000}, other)
    # The record goes with the run when a fresh start sets its files aside.
    aside = set_aside_earlier_run(tmp_path / "run")
    assert started_from(aside) == (other.resolve(), 1000)
    assert resolve_resume(str(other), tmp_path / "run") == str(other)


def test_a_run_that_fails_leaves_no_folder_choice_behind(tiny_pair, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    cfg = tiny_config(*tiny_pair, run_dir="", data=str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        train(cfg)
    # Else the next run started in this process would write into the failed run's folder.
    assert RUN_DIR_ENV not in os.environ


def test_a_run_without_a_run_dir_trains_into_runs_name_time(tiny_pair, tmp_path, monkeypatch):
    """No test trained without --run-dir: the README's runs/<name>-<time>, its summary
    naming it, and the next run in the process choosing anew."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    summary = train(tiny_config(*tiny_pair, run_dir="", max_steps=1, name="tiny"))
    (folder,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"tiny-\d{8}-\d{6}", folder.name)
    assert summary["run_dir"] == str(folder.resolve())
    assert (folder / "summary.json").is_file() and (folder / "artifact").is_dir()
    assert RUN_DIR_ENV not in os.environ
