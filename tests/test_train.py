"""Training end to end on the tiny pair: what a run writes, what it trains, and resume."""

from __future__ import annotations

import csv
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from condense.build import build
from condense.callbacks import ExportBest
from condense.config import ConfigError
from condense.model import Condenser
from condense.module import CheckpointMismatchError, CondenseModule
from condense.run_dir import read_checkpoint
from condense.training import describe, train, trained_commits
from condense.weights import load_causal_lm
from tests.conftest import (
    cache_as_hub_commit,
    document_rows,
    shifted_copy,
    tiny_config,
    write_jsonl,
)

SUMMARY_KEYS = {
    "steps",
    "wall_s",
    "val_loss_initial",
    "val_loss_best",
    "val_loss_final",
    "best_checkpoint",
    "last_checkpoint",
    "wandb_run_id",
}


def test_run_writes_summary_csv_and_checkpoints(tiny_pair, tmp_path, monkeypatch):
    from condense.checkpoint_io import AtomicCheckpointIO

    saved = []
    original_save = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(
        AtomicCheckpointIO,
        "save_checkpoint",
        lambda self, ckpt, path, **kwargs: saved.append(path) or original_save(self, ckpt, path),
    )
    monkeypatch.chdir(tmp_path)
    summary = train(tiny_config(*tiny_pair, Path("run"), max_steps=5))
    assert saved  # checkpoints go through the atomic writer
    # Every path in the summary is absolute, though the run dir was given relative.
    paths = ("run_dir", "artifact", "best_checkpoint", "last_checkpoint")
    assert all(Path(summary[key]).is_absolute() for key in paths)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(on_disk) and on_disk == summary
    assert summary["steps"] == 5
    assert summary["wandb_run_id"] is None  # wandb="off"
    # Validated before the first step, at steps 2 and 4, and at the last step (5).
    with (tmp_path / "run" / "metrics.csv").open() as f:
        val_steps = [row["step"] for row in csv.DictReader(f) if row["val_loss"]]
    assert val_steps == ["0", "1", "3", "4"]  # Lightning's step column is 0-based
    assert summary["val_loss_final"] is not None and summary["val_loss_initial"] is not None
    assert summary["val_loss_best"] <= summary["val_loss_final"]
    assert {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()} == {
        "best.ckpt",
        "last.ckpt",
    }
    # What was cut to fit max_tokens is counted, and said in a note.
    assert summary["data"]["targets_cut_to_max_tokens"] > 0
    assert any("cut to dataset.max_tokens" in note for note in summary["notes"])
    assert summary["last_checkpoint"].endswith("last.ckpt")
    assert (tmp_path / "run" / "config.yaml").is_file()
    # The portable artifact holds the best validation's weights.
    from condense.artifact import ARTIFACT_FILES, read_config

    assert {p.name for p in (tmp_path / "run" / "artifact").iterdir()} == ARTIFACT_FILES
    exported = read_config(tmp_path / "run" / "artifact")
    assert exported["val_loss"] == pytest.approx(summary["val_loss_best"])
    assert summary["artifact"] == str((tmp_path / "run" / "artifact").resolve())
    assert exported["training_config"]["max_steps"] == 5
    card = (tmp_path / "run" / "artifact" / "README.md").read_text()
    assert "## Training configuration" in card and "max_steps: 5" in card


def test_training_rows_are_logged_every_log_every_n_steps(tiny_pair, tmp_path):
    """metrics.csv's train_loss and rate rows come at the multiples of log_every_n_steps
    (Lightning's step column is 0-based: step S is the S+1th)."""
    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=6, log_every_n_steps=3)
    train(cfg)
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["step"] for row in rows if row["train_loss"]] == ["2", "5"]
    assert [row["step"] for row in rows if row["lr-AdamW/lora"]] == ["2", "5"]


def test_training_lowers_validation_loss(tiny_pair, tmp_path):
    summary = train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=12, val_every_n_steps=6))
    assert summary["val_loss_best"] < summary["val_loss_initial"]


def test_decoder_is_untouched_and_not_in_the_optimizer(tiny_pair, tmp_path):
    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=3)
    module, datamodule = build(cfg, cfg.precision)
    decoder_before = {k: v.clone() for k, v in module.condenser.decoder.state_dict().items()}
    lora_before = {k: v.clone() for k, v in module.condenser.trainable_state_dict().items()}

    import lightning as L

    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule)

    after = module.condenser.decoder.state_dict()
    assert all(torch.equal(decoder_before[k], after[k]) for k in decoder_before)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in module.condenser.decoder.parameters()}
    changed = module.condenser.trainable_state_dict()
    assert any(not torch.equal(lora_before[k], changed[k]) for k in lora_before)  # it did train


def test_checkpoint_holds_only_the_trainable_state(tiny_pair, tmp_path):
    summary = train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=2))
    cfg = tiny_config(*tiny_pair, tmp_path / "unused")
    module, _ = build(cfg, cfg.precision)
    trainable = module.condenser.trainable_state_dict()
    trainable_bytes = sum(v.numel() * v.element_size() for v in trainable.values())
    frozen_bytes = sum(
        p.numel() * p.element_size() for p in module.parameters() if not p.requires_grad
    )

    ckpt = torch.load(summary["last_checkpoint"], weights_only=True)
    assert set(ckpt["state_dict"]) == {f"condenser.{k}" for k in trainable}
    size = (tmp_path / "run" / "checkpoints" / "last.ckpt").stat().st_size
    # Weights plus AdamW's two moments, plus a little bookkeeping: no frozen weights.
    assert size < 3 * trainable_bytes + 200_000
    assert size < frozen_bytes


def test_resume_from_last_continues_the_global_step(tiny_pair, tmp_path, monkeypatch):
    first = train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=3))
    saved = torch.load(first["last_checkpoint"], weights_only=True)["state_dict"]
    seen_at_start = {}

    def record(self):
        seen_at_start.update(
            {f"condenser.{k}": v.clone() for k, v in self.condenser.trainable_state_dict().items()}
        )

    monkeypatch.setattr(CondenseModule, "on_train_start", record, raising=False)
    second = train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=6))
    # Training restarted from the saved weights, not from a fresh init.
    assert set(seen_at_start) == set(saved)
    assert all(torch.equal(seen_at_start[k], saved[k]) for k in saved)
    assert first["steps"] == 3
    assert second["resumed_from"].endswith("last.ckpt")
    assert second["steps"] == 6 and second["resumed_at_step"] == 3
    assert "6 steps, the last 3 in" in describe(second)  # the time is this run's alone
    # The initial validation loss is the first run's, carried in the checkpoint.
    assert second["val_loss_initial"] == first["val_loss_initial"]
    # metrics.csv keeps both runs' rows: 3 + 3 training steps, not 3 + 6 from a restart.
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    train_rows = [r for r in rows[1:] if r.split(",")[header.index("train_loss")]]
    assert len(train_rows) == 6


def test_a_resume_with_new_rates_trains_at_them(tiny_pair, tmp_path, capsys):
    """The optimizer's base rates and weight decay come back from the checkpoint; a resume
    whose config changes them goes on at the new ones, on the same schedule, and says so."""
    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=3))
    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=6)
    cfg.optim.lr_lora = cfg.optim.lr_condense / 5
    cfg.optim.weight_decay = 0.25
    summary = train(cfg)
    assert "resumed with a new optim.lr_lora, optim.weight_decay" in capsys.readouterr().out
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rates = {
            int(row["step"]): (float(row["lr-AdamW/lora"]), float(row["lr-AdamW/condense"]))
            for row in csv.DictReader(f)
            if row["lr-AdamW/lora"]
        }
    assert sorted(rates) == [0, 1, 2, 3, 4, 5]  # one rate row per step, across both runs
    assert all(lora == condense for lora, condense in (rates[1], rates[2]))
    assert all(lora == pytest.approx(condense / 5) for lora, condense in (rates[3], rates[5]))
    saved = torch.load(summary["last_checkpoint"], weights_only=True)["optimizer_states"][0]
    assert {group["weight_decay"] for group in saved["param_groups"]} == {0.25}


def test_the_same_command_after_the_run_finished_keeps_its_summary(tiny_pair, tmp_path, capsys):
    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=2)
    first = train(cfg)
    written = (tmp_path / "run" / "summary.json").read_text()
    import condense.training

    def no_models(*_):  # a launcher's restart paid a load of both models (minutes) for it
        raise AssertionError("the models loaded to say there is nothing to train")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(condense.training, "build", no_models)
        again = train(cfg)  # resume auto: last.ckpt is at step 2 of 2
    assert again == first  # not the summary of a run of no steps (no final loss, 0 s)
    assert (tmp_path / "run" / "summary.json").read_text() == written
    assert "already trained 2 of max_steps 2" in capsys.readouterr().out
    assert not list((tmp_path / "run").glob("earlier-*"))
    at_2 = torch.load(first["last_checkpoint"], weights_only=True)["state_dict"]
    more = train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=3))
    assert more["steps"] == 3  # a higher max_steps goes on from the checkpoint
    # At the rate of the new schedule's step 3, not the old one's end (0): it trained.
    at_3 = torch.load(more["last_checkpoint"], weights_only=True)["state_dict"]
    assert not all(torch.equal(at_2[k], at_3[k]) for k in at_2)
    # A summary of another stretch than the checkpoint's (one of step 2 beside a step-3
    # checkpoint: stopped before writing its own) is not passed off as the run's.
    (tmp_path / "run" / "summary.json").write_text(written)
    last = train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=3))
    assert last["steps"] == 3 and last != first
    # Its last validation's loss is read back from the checkpoint, not lost.
    assert last["val_loss_final"] == more["val_loss_final"] is not None


def test_a_run_on_relative_model_folders_records_them_absolute(tiny_pair, tmp_path, monkeypatch):
    """Its artifact and config.yaml named the folders as typed: from any other working
    folder the artifact failed to load, the names read as Hub ids."""
    base = Path(tiny_pair[0]).parent.parent
    monkeypatch.chdir(base)
    relative = [str(Path(name).relative_to(base)) for name in tiny_pair]
    summary = train(tiny_config(*relative, tmp_path / "run", max_steps=1))
    monkeypatch.chdir(tmp_path)
    config = json.loads((tmp_path / "run" / "artifact" / "condense_config.json").read_text())
    assert (config["encoder"], config["decoder"]) == tuple(tiny_pair)
    assert f"encoder: {tiny_pair[0]}" in (tmp_path / "run" / "config.yaml").read_text()
    condenser = Condenser.from_pretrained(str(tmp_path / "run" / "artifact"))
    assert condenser.condense(["A cat sat."]).shape[0] == 1 and summary["steps"] == 1


def test_wandb_offline_records_a_run_id(tiny_pair, tmp_path):
    summary = train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=1, wandb="offline"))
    assert summary["wandb_run_id"]
    assert (tmp_path / "run" / "wandb_run_id").read_text() == summary["wandb_run_id"]


def test_bad_data_fails_before_anything_is_written(tiny_pair, tmp_path):
    import pytest

    from condense.samples import DataError

    with pytest.raises(DataError, match="no such file"):
        train(tiny_config(*tiny_pair, tmp_path / "run", data=str(tmp_path / "missing.jsonl")))
    assert not (tmp_path / "run").exists()


def test_initialisation_depends_only_on_the_seed(tiny_pair, tmp_path):
    cfg = tiny_config(*tiny_pair, tmp_path / "run")
    first, _ = build(cfg, cfg.precision)
    torch.rand(1000)  # as if loading had drawn random numbers
    second, _ = build(cfg, cfg.precision)
    a, b = first.condenser.trainable_state_dict(), second.condenser.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg.seed = 1
    other = build(cfg, cfg.precision)[0].condenser.trainable_state_dict()
    assert not torch.equal(a["condense_tokens"], other["condense_tokens"])


def test_a_checkpoint_of_another_shape_is_refused(tiny_pair, tmp_path):
    import pytest

    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=2))
    saved_config = (tmp_path / "run" / "config.yaml").read_text()
    changes = {
        "missing|unexpected": {"lora_target_modules": ["q_proj", "v_proj"]},
        # The same tensor names, other sizes: the first that differs is named, both ways.
        r"another shape \(e\.g\. \S*lora_A\S*: \(4, \d+\) in the checkpoint, \(8, \d+\)": {
            "lora_r": 8
        },
        r"another shape \(e\.g\. condenser\.condense_tokens: \(4, \d+\) in the checkpoint,"
        r" \(3, \d+\) here\); was it trained with another model.num_condense_tokens, or"
        r" encoder\?": {"num_condense_tokens": 3},
        # It asked about num_condense_tokens or LoRA settings.
        r"condenser.norm.weight: .*another model.n_last_hidden_states, encoder or decoder\?": {
            "n_last_hidden_states": 1
        },
        # No shape changes, but every LoRA update is scaled 8x: it resumed without a word.
        r"was trained with model.lora_alpha 8, not 64: its LoRA updates would be scaled 8x;"
        r" give --model.lora_alpha 8 to go on with it": {"lora_alpha": 64},
    }
    for refusal, change in changes.items():
        other = tiny_config(*tiny_pair, tmp_path / "run", max_steps=4)
        for key, value in change.items():
            setattr(other.model, key, value)
        with pytest.raises(CheckpointMismatchError, match=refusal):
            train(other)
        # Refused before anything was written: the run dir still describes the first run.
        assert (tmp_path / "run" / "config.yaml").read_text() == saved_config


@pytest.mark.parametrize("change", ["seed", "val_size", "max_tokens"])
def test_resuming_on_another_split_is_refused_before_anything_is_written(
    change, tiny_pair, tmp_path
):
    # Another seed resumed without a word: validation then held samples the run had
    # trained on, and the restored best val_loss was over other samples.
    from condense.samples import DataError

    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=2))
    saved_config = (tmp_path / "run" / "config.yaml").read_text()
    other = tiny_config(*tiny_pair, tmp_path / "run", max_steps=4)
    if change == "seed":
        other.seed = 3
    elif change == "val_size":
        other.dataset.val_size = 8
    else:  # the same samples, their targets cut elsewhere
        other.dataset.max_tokens = 64
    refusal = "read its validation samples otherwise" if change == "max_tokens" else "split its"
    with pytest.raises(DataError, match=refusal):
        train(other)
    assert (tmp_path / "run" / "config.yaml").read_text() == saved_config
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith("earlier")]
    # The run's own settings resume it.
    assert train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=4))["resumed_at_step"] == 2


def _lantern_rows(count: int) -> list[dict[str, str]]:
    """Rows of a data file, each of its own passage."""
    return [
        {
            "context": f"Passage {i} tells of {i} lanterns.",
            "prompt": "How many?",
            "completion": f"{i}",
        }
        for i in range(count)
    ]


def test_resuming_after_the_data_file_changed_says_so(tiny_pair, tmp_path):
    """A row appended to the data file was refused as "another seed, data source or
    dataset setting", none of which had changed."""
    from condense.samples import DataError

    data = tmp_path / "data.jsonl"
    rows = _lantern_rows(31)
    write_jsonl(data, rows[:30])
    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=2, data=str(data)))
    write_jsonl(data, rows)
    with pytest.raises(DataError) as err:
        train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=4, data=str(data)))
    assert f"--data {data} has changed since the run started (30 rows then, 31 now)" in str(
        err.value
    )
    assert "another seed" not in str(err.value)
    # A setting changed too: the message names them, as it cannot tell which of the two.
    with pytest.raises(DataError, match=r"another seed, data source or dataset setting"):
        train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=4, data=str(data), seed=3))


def test_resuming_after_a_training_row_was_edited_says_so(tiny_pair, tmp_path, capsys, caplog):
    """An edit that kept the row count and the validation split resumed without a word."""
    from condense.data import load_samples
    from condense.samples import split_train_val

    data = tmp_path / "data.jsonl"
    rows = _lantern_rows(30)
    write_jsonl(data, rows)
    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=2, data=str(data))
    train(cfg)
    train_samples, _ = split_train_val(load_samples(str(data), cfg.dataset, cfg.seed), 12, cfg.seed)
    edited = next(i for i, row in enumerate(rows) if row["context"] == train_samples[0].context)
    rows[edited]["completion"] = "eleven"
    write_jsonl(data, rows)
    capsys.readouterr()
    summary = train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=4, data=str(data)))
    assert summary["steps"] == 4
    assert f"--data {data}: its training samples changed since the run started" in caplog.text
    # And in the closing notes.
    assert "went on with them as they were at the resume" in capsys.readouterr().out
    # Resumed again on the same rows: nothing more to say.
    caplog.clear()
    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=6, data=str(data)))
    assert "training samples changed" not in caplog.text + capsys.readouterr().out


def test_resuming_a_run_from_before_the_group_column_was_read_says_so(
    tiny_pair, tmp_path, monkeypatch
):
    """Such a run split without the column; its refusal blamed the seed or settings."""
    import condense.samples
    from condense.samples import DataError

    data = write_jsonl(tmp_path / "data.jsonl", document_rows(10, 3))
    read = condense.samples.row_fields
    monkeypatch.setattr(condense.samples, "row_fields", lambda row: {**read(row), "group": None})
    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=2, data=str(data)))
    monkeypatch.undo()
    with pytest.raises(DataError, match="or it was started before condense read the data's group"):
        train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=4, data=str(data)))


def test_resuming_with_another_batch_size_is_refused_where_it_picks_the_validation(
    tiny_pair, tmp_path
):
    # With val_batches, validation scores the first batches of its order, which the batch
    # size makes: the restored best was over other samples. Without it, all are scored.
    from condense.samples import DataError

    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=2, val_batches=2))
    other = tiny_config(*tiny_pair, tmp_path / "run", max_steps=4, val_batches=2)
    other.dataset.batch_size = 2
    with pytest.raises(DataError, match="validated other samples"):
        train(other)
    train(tiny_config(*tiny_pair, tmp_path / "all", max_steps=2))
    other = tiny_config(*tiny_pair, tmp_path / "all", max_steps=4)
    other.dataset.batch_size = 2
    assert train(other)["resumed_at_step"] == 2


def test_a_finished_checkpoint_of_another_run_is_refused_before_the_models_load(
    tiny_pair, tmp_path, monkeypatch
):
    import condense.training
    from condense.config import ConfigError

    class Loaded(Exception):
        pass

    def build(*_):
        raise Loaded  # the models would load here: minutes for the default job's

    monkeypatch.setattr(condense.training, "build", build)
    other = tmp_path / "other.ckpt"
    torch.save({"global_step": 4, "loops": {}}, other)
    with pytest.raises(ConfigError, match="at step 4 and max_steps is 4: nothing to train"):
        train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=4, resume=str(other)))
    # One whose final validation a SIGTERM cut short has that validation still to run.
    progress = {"total": {"ready": 3, "started": 3, "processed": 2, "completed": 2}}
    loops = {"fit_loop": {"epoch_loop.val_loop.batch_progress": progress}}
    torch.save({"global_step": 4, "loops": loops}, other)
    with pytest.raises(Loaded):
        train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=4, resume=str(other)))


def test_a_stopped_run_past_a_lower_max_steps_is_refused_before_the_models_load(
    tiny_pair, tmp_path, monkeypatch
):
    """Stopped at step 9 and run again with --max-steps 5, it "finished" at once: a
    summary of nothing, no checkpoint named, exit 0, and config.yaml said 5."""
    import condense.training
    from condense.config import ConfigError

    def build(*_):
        raise AssertionError("the models loaded")

    monkeypatch.setattr(condense.training, "build", build)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"global_step": 9, "loops": {}}, last)
    with pytest.raises(ConfigError) as err:
        train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=5))
    assert str(err.value) == (
        f"this run dir's last checkpoint {last} is at step 9 and max_steps is 5: nothing to"
        " train (raise --max-steps to go on from it)"
    )
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]


def test_a_stopped_run_says_how_to_resume_it(tiny_pair, tmp_path):
    """Without --run-dir, "run the same command again" started a new runs/<name>-<time>."""
    from condense.training import resume_hint

    named = tiny_config(*tiny_pair, tmp_path / "run")
    assert resume_hint(named, tmp_path / "run") == "run the same command again"
    named.run_dir = None
    chosen = Path("runs") / "tiny-20261207-154858"
    assert resume_hint(named, chosen) == f"run the same command again with --run-dir {chosen}"


@pytest.mark.parametrize("batch", [0, 2])  # of its 3: mid-way, and its last
def test_a_sigterm_in_the_first_validation_stops_the_run_and_says_so(
    batch, tiny_pair, tmp_path, monkeypatch, caplog
):
    """Lightning looks for a SIGTERM between validation batches only: one in the first
    validation's last batch was forgotten by fit, and the run trained to max_steps and
    exited 0 (a preemption notice lost); one mid-way stopped it without a word."""
    import logging
    import os
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    validate = CondenseModule.validation_step

    def signalled(self, step_batch, batch_idx):
        validate(self, step_batch, batch_idx)
        if self.global_step == 0 and batch_idx == batch:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler sets its flag

    monkeypatch.setattr(CondenseModule, "validation_step", signalled)
    caplog.set_level(logging.INFO)
    with pytest.raises(SIGTERMException):
        train(tiny_config(*tiny_pair, tmp_path / "run"))
    assert "SIGTERM during the first validation: stopped before any training step" in caplog.text
    assert not (tmp_path / "run" / "checkpoints").exists()


# A progress bar on stdout and a line logged through Lightning mid-bar, as during fit.
MID_BAR = """
import sys
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from tqdm import tqdm
from condense.training import lines_above_progress_bar
with lines_above_progress_bar():
    bar = tqdm(total=4, file=sys.stdout, desc="Epoch 1", mininterval=0)
    bar.update(1)
    rank_zero_info("condense: SIGTERM: saved step 1")
    bar.close()
"""


def test_a_line_logged_mid_progress_bar_prints_on_a_line_of_its_own():
    """condense's messages during fit (Ctrl-C, SIGTERM) go through Lightning's logging to
    stderr, its progress bar to stdout: on a terminal a message carried on the bar's line
    ("... train_loss=5.870]condense: SIGTERM: saved step 17 ..."), which then drew again."""
    out = subprocess.run(
        [sys.executable, "-c", MID_BAR],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, as on a terminal
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.count("condense: SIGTERM: saved step 1") == 1, out
    before = out.split("condense: SIGTERM")[0]
    assert "Epoch 1" in before and before.endswith(("\r", "\n")), out  # the bar's line cleared


def test_a_loss_that_is_not_a_number_is_null_in_summary_json_and_said_why():
    """summary.json held NaN, which JSON parsers refuse."""
    from condense.training import _float, _null_loss_notes

    assert _float(torch.tensor(float("nan"))) is None and _float(float("inf")) is None
    assert _float(torch.tensor(2.5)) == 2.5 and _float(None) is None
    notes = _null_loss_notes(val_loss_initial=5.0, val_loss_final=torch.tensor(float("nan")))
    assert notes == ["val_loss_final is null: the loss was nan"]


def test_each_epoch_has_a_new_batch_order(tiny_pair, tmp_path, monkeypatch):
    orders: dict[int, list] = {}

    def record(self, batch, batch_idx):
        orders.setdefault(self.current_epoch, []).append(batch["context_ids"].tolist())
        return CondenseModule_training_step(self, batch, batch_idx)

    CondenseModule_training_step = CondenseModule.training_step
    monkeypatch.setattr(CondenseModule, "training_step", record)
    cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=24, val_every_n_steps=24)
    cfg.dataset.synthetic_passages = 12  # 36 samples - 12 validation = 6 batches an epoch
    train(cfg)
    assert len(orders) >= 2 and len(orders[0]) == len(orders[1])
    assert orders[0] != orders[1]

    def samples(epoch):  # every context of the epoch, padding stripped
        return sorted(str([t for t in row if t != 0]) for batch in orders[epoch] for row in batch)

    assert samples(0) == samples(1)  # the same samples, in a new order


@pytest.mark.parametrize(
    ("headroom", "precision", "expected"),
    [
        (0.85, "bf16-mixed", False),
        (0.95, "bf16-mixed", True),
        (0.85, "32-true", False),
        (0.95, "32-true", True),
    ],
)
def test_auto_checkpointing_only_where_the_largest_batch_needs_it(
    tiny_pair, tmp_path, monkeypatch, caplog, headroom, precision, expected
):
    """gradient_checkpointing null on a GPU: off where the largest batch fits in 90% of the
    GPU's memory without it (it costs a third more compute), on where it would not, by the
    estimate for the run's own precision (GPU memory faked here: the estimate is `headroom`
    of the whole)."""
    from types import SimpleNamespace

    from condense import build as build_module
    from condense.model import is_checkpointing
    from condense.plan import largest_batch_memory, meta_condenser
    from condense.weights import load_causal_lm

    cfg = tiny_config(*tiny_pair, tmp_path / "run", accelerator="auto")
    assert cfg.model.gradient_checkpointing is None
    condenser = meta_condenser(cfg)
    need = largest_batch_memory(condenser, cfg, checkpointing=False, precision=precision)
    if precision == "32-true":  # 4-byte weights and activations: far more than bf16's
        assert need > 1.5 * largest_batch_memory(condenser, cfg, checkpointing=False)
    memory = SimpleNamespace(total_memory=need / headroom)
    monkeypatch.setattr(build_module, "on_gpu", lambda accelerator: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: memory)
    encoder, decoder = (load_causal_lm(name) for name in tiny_pair)
    with caplog.at_level("INFO"):
        module = build_module.condense_module(cfg, encoder, decoder, precision)
    assert is_checkpointing(module.condenser.decoder) is expected
    assert f"gradient checkpointing {'on' if expected else 'off'}" in caplog.text


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cpu_precision_follows_the_cpus_bf16_units(has_bf16, monkeypatch, recwarn):
    """auto trains bf16-mixed where the CPU computes bf16 in hardware, else 32-true; an
    explicit bf16 on a CPU without it runs as asked, with a warning that it is emulated."""
    from condense import device
    from condense.device import resolve_precision

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: has_bf16)
    assert resolve_precision("auto", "cpu") == ("bf16-mixed" if has_bf16 else "32-true")
    assert resolve_precision("32", "cpu") == "32-true"
    if has_bf16:
        assert resolve_precision("bf16", "cpu") == "bf16-mixed"
    assert not [w for w in recwarn.list if "emulated" in str(w.message)]
    if not has_bf16:
        with pytest.warns(UserWarning, match="emulated.*--precision auto picks fp32"):
            assert resolve_precision("bf16", "cpu") == "bf16-mixed"


def test_compiled_blocks_compile_validation_once_for_the_whole_run(
    tiny_pair, tmp_path, monkeypatch, reset_dynamo
):
    """With model.compile, the validation before training and those inside it run the same
    compiled graphs: compiling them twice (inference_mode, then no_grad) cost 4 steps of the
    compiled test job 84 s on a 2-core CPU (cold compile cache), and 2 of torch's 8 compiled
    variants per block."""
    counters = reset_dynamo
    compiled = {"validate": 0, "fit": 0}
    step = CondenseModule.validation_step

    def counted(self, batch, batch_idx):
        before = counters["frames"]["total"]
        step(self, batch, batch_idx)
        compiled[self.trainer.state.fn.value] += counters["frames"]["total"] - before

    monkeypatch.setattr(CondenseModule, "validation_step", counted)
    # Dynamo's guards decide what recompiles; inductor's code for each graph is not needed.
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="eager", **kw)
    )
    model = tiny_config(*tiny_pair, tmp_path).model
    model.compile = True
    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=2, model=model))
    assert compiled["validate"] > 0, "the first validation compiled nothing: not compiled?"
    assert compiled["fit"] == 0, f"fit's validation compiled {compiled['fit']} more frames"


@pytest.mark.parametrize(("val_loss", "exported"), [(3.9, True), (4.0, False), (4.1, False)])
def test_the_artifact_is_rewritten_only_where_best_ckpt_is(
    val_loss, exported, tiny_pair, tmp_path, monkeypatch
):
    # Both go by the one best score: on a tie best.ckpt stays at the earlier step, and the
    # artifact used to move on to the later one.
    from lightning.pytorch.trainer.states import TrainerFn

    import condense.callbacks

    saved = []
    monkeypatch.setattr(condense.callbacks, "save_artifact", lambda *args: saved.append(args[2]))
    trainer = SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        is_global_zero=True,
        global_step=8,
        checkpoint_callback=SimpleNamespace(best_model_score=torch.tensor(4.0)),
        callback_metrics={"val_loss": torch.tensor(val_loss)},
        datamodule=SimpleNamespace(split_digest=lambda: "0123"),
    )
    module = SimpleNamespace(condenser=None)
    ExportBest(tmp_path / "artifact", tiny_config(*tiny_pair, tmp_path)).on_validation_end(
        trainer, module
    )
    assert [extra["train_steps"] for extra in saved] == ([8] if exported else [])


def test_lightnings_advert_is_dropped_and_its_other_lines_kept(caplog):
    """Every run printed "💡 Tip: ... try installing [litlogger] ..."."""
    import logging

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from condense.training import quiet_lightning

    quiet_lightning()

    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](...)")
        rank_zero_info("condense: resumed at step 3")
    assert "litlogger" not in caplog.text and "condense: resumed at step 3" in caplog.text


def test_a_run_dir_inside_its_data_folder_is_refused_before_anything_is_written(
    tiny_pair, tmp_path
):
    """The run's artifact/*.json files were read as training data by the same command
    run again, which the README says resumes."""
    data = tmp_path / "data"
    data.mkdir()
    row = {"context": "A cat sat.", "prompt": "Who sat?", "completion": "A cat."}
    (data / "train.jsonl").write_text(json.dumps(row) + "\n")
    cfg = tiny_config(*tiny_pair, data / "runs" / "tiny", data=str(data))
    with pytest.raises(ConfigError, match=r"run_dir .* is inside the --data folder"):
        train(cfg)
    assert [p.name for p in data.iterdir()] == ["train.jsonl"]


def test_synthetic_data_is_not_taken_for_a_folder_of_that_name(tiny_pair, tmp_path, monkeypatch):
    """A run dir under ./synthetic/ was refused as inside the --data folder, though
    synthetic data is made, not read from there."""
    train_module = importlib.import_module("condense.training")

    def past_the_check(*_):
        raise RuntimeError("past the check")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic").mkdir()
    monkeypatch.setattr(train_module, "resolve_resume", past_the_check)
    cfg = tiny_config(*tiny_pair, Path("synthetic") / "runs" / "tiny", data="synthetic")
    with pytest.raises(RuntimeError, match="past the check"):
        train(cfg)


def test_an_empty_data_is_not_taken_for_the_working_folder(tiny_pair, tmp_path, monkeypatch):
    """Path("") is the working folder, which holds the default run dir: `--data ""` was
    told its run dir lay inside the --data folder, not that it names no data."""
    from condense.samples import DataError

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(*tiny_pair, tmp_path / "unused", data="")
    cfg.run_dir = None
    with pytest.raises(DataError, match="no data source"):
        train(cfg)


def test_a_resume_loads_the_hub_commits_its_checkpoint_was_trained_on(
    tiny_pair, tmp_path, hub_cache, caplog
):
    """A preempted run restarted after a base model's repo moved on trained its adapter
    on the newer weights from there, without a word."""
    trained_on, newer = "a" * 40, "b" * 40
    for role, folder in zip(("encoder", "decoder"), tiny_pair):
        cache_as_hub_commit(hub_cache, f"someone/{role}", trained_on, folder)
    cfg = tiny_config("someone/encoder", "someone/decoder", tmp_path / "run", max_steps=2)
    train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["base_models"]["encoder"] == {
        "name": "someone/encoder",
        "commit": trained_on,
    }
    # The encoder's main moves to other weights of the same shapes; the decoder's cache
    # holds its commit alone, with no main, as a download of that commit leaves it.
    cache_as_hub_commit(
        hub_cache, "someone/encoder", newer, shifted_copy(tiny_pair[0], tmp_path / "b")
    )
    (hub_cache / "models--someone--decoder" / "refs" / "main").unlink()
    cfg.max_steps = 4
    train(cfg)
    assert read_checkpoint(last)["global_step"] == 4
    assert read_checkpoint(last)["base_models"]["encoder"]["commit"] == trained_on
    assert f"encoder someone/encoder at commit {trained_on}, the checkpoint's" in caplog.text
    module, _ = build(cfg, cfg.precision, trained_commits(read_checkpoint(last), cfg))
    loaded = module.condenser.encoder.get_base_model().get_input_embeddings().weight
    trained = load_causal_lm(tiny_pair[0]).get_input_embeddings().weight
    assert torch.equal(loaded, trained)  # the weights trained on, not main's (0.1 off)
    fresh = tiny_config("someone/encoder", "someone/decoder", tmp_path / "fresh", max_steps=2)
    (hub_cache / "models--someone--decoder" / "refs" / "main").write_text(trained_on)
    train(fresh)  # a new run takes the newest
    fresh_last = tmp_path / "fresh" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(fresh_last)["base_models"]["encoder"]["commit"] == newer


def test_a_run_says_which_parameters_train_without_lightnings_table(
    tiny_pair, tmp_path, caplog, capfd
):
    """Lightning's model summary said "FLOPs 0" (it counts none without an example input)
    and warned that bf16-mixed is not supported by it, on every run."""
    caplog.set_level("INFO")
    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=1, val_every_n_steps=1))
    printed = capfd.readouterr()
    assert "Total FLOPs" not in printed.out + printed.err + caplog.text
    line = next(m for m in caplog.messages if "parameters train" in m)
    counts = [int(n.replace(",", "")) for n in re.findall(r"[\d,]+\d", line)]
    trained, total, *groups = counts
    assert trained == sum(groups) and 0 < trained < total
    assert line.startswith("condense: ") and "(condense " in line and ", lora " in line


@pytest.mark.parametrize(
    ("best", "said"),
    [
        (4.0, "(20% lower)"),
        (4.98, "(0.4% lower)"),  # read "(0% lower)"
        (5.1, "(2.0% higher: no better than untrained)"),
    ],
)
def test_the_summary_says_how_far_the_loss_fell_or_that_it_rose(best, said):
    """A run whose best validation was above the untrained one read "(-2% lower)"."""
    summary = {
        "val_loss_initial": 5.0, "val_loss_best": best, "val_loss_final": best, "steps": 5,
        "wall_s": 1.0, "precision": "32-true", "best_checkpoint": "b", "last_checkpoint": "l",
        "run_dir": "r",
    }  # fmt: skip
    assert f"best {best:.4f} {said}, final" in describe(summary)


def test_the_rate_warms_up_then_follows_the_cosine_of_max_steps_also_after_a_resume(
    tiny_pair, tmp_path
):
    """Linear warm-up over optim.warmup_steps, then a cosine to 0 at max_steps; a run
    resumed with a higher max_steps goes on along the cosine of the new one (README)."""
    import math

    def expected(step: int, total: int, warmup: int = 2) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    for max_steps in (4, 8):  # the second resumes from the first's step 4
        cfg = tiny_config(*tiny_pair, tmp_path / "run", max_steps=max_steps)
        cfg.optim.warmup_steps = 2
        train(cfg)
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rates = {
            int(row["step"]): float(row["lr-AdamW/condense"]) / cfg.optim.lr_condense
            for row in csv.DictReader(f)
            if row["lr-AdamW/condense"]
        }
    assert sorted(rates) == list(range(8))
    for step, rate in rates.items():
        assert rate == pytest.approx(expected(step, 4 if step < 4 else 8), abs=1e-9), step
