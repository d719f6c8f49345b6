"""Loggers: W&B never waits on the network; the CSV log keeps a resumed run's history."""

from __future__ import annotations

import time

import pytest

from condense.loggers import (
    ResumableCSVLogger,
    drop_rows_from,
    make_loggers,
    wandb_mode,
    wandb_run_id,
)


def test_wandb_with_a_key_but_no_server_goes_offline_fast(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    start = time.monotonic()
    assert wandb_mode("auto") == "offline"
    assert time.monotonic() - start < 5


def test_wandb_auto_is_online_only_with_a_key_and_an_answering_server(monkeypatch):
    from condense import loggers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode("auto") == "offline"
    assert wandb_mode("off") is None
    assert wandb_mode("online") == "online"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(loggers, "reachable", lambda url: True)
    assert wandb_mode("auto") == "online"
    monkeypatch.setattr(loggers, "reachable", lambda url: False)
    assert wandb_mode("auto") == "offline"


def test_csv_log_appends_after_a_restart(tmp_path):
    first = ResumableCSVLogger(tmp_path, name="", version="")
    first.log_metrics({"train_loss": 1.0}, step=0)
    first.log_metrics({"val_loss": 2.0}, step=0)
    first.save()
    second = ResumableCSVLogger(tmp_path, name="", version="")
    second.log_metrics({"train_loss": 0.5}, step=1)
    second.save()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,train_loss,val_loss"
    assert len(rows) == 4 and rows[-1].startswith("1,0.5")


def test_a_resume_drops_the_rows_its_checkpoint_did_not_see(tmp_path):
    # Killed after logging steps 0-4; the checkpoint was of step 3 (3 steps done, then
    # validation logged at step 2). Steps 3 and 4 will be trained and logged again.
    log = ResumableCSVLogger(tmp_path, name="", version="")
    for step in range(5):
        log.log_metrics({"train_loss": 5.0 - step}, step=step)
        if step == 2:
            log.log_metrics({"val_loss": 9.0}, step=step)
    log.save()
    drop_rows_from(tmp_path / "metrics.csv", 3)
    resumed = ResumableCSVLogger(tmp_path, name="", version="")
    resumed.log_metrics({"train_loss": 1.5}, step=3)
    resumed.save()
    text = (tmp_path / "metrics.csv").read_text()
    steps = [int(line.split(",")[0]) for line in text.splitlines()[1:]]
    assert steps == [0, 1, 2, 2, 3] and "9.0" in text and "2.0" not in text


@pytest.mark.parametrize("cut", ["2,1.5,", "2,1.5,0.00848", "2", "4,1.5,0.0084"])
def test_a_resume_drops_a_row_cut_short_and_appends_on_a_line_of_its_own(tmp_path, cut):
    """A disk that filled while a row was written left it without its end: every resume
    then stopped with an IndexError; a cut row that still read as an earlier step had the
    next rows appended onto its line (12 fields under a header of 8)."""
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(
        "step,train_loss,val_loss\r\n0,3.0,\r\n1,2.0,\r\n1,,2.5\r\n" + cut, newline=""
    )
    drop_rows_from(metrics, 3)
    resumed = ResumableCSVLogger(tmp_path, name="", version="")
    resumed.log_metrics({"train_loss": 1.5}, step=3)
    resumed.save()
    lines = metrics.read_text().splitlines()
    assert [line.count(",") for line in lines] == [2] * 5
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "1", "3"]


def test_a_row_cut_between_its_carriage_return_and_newline_is_kept(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,train_loss\r\n0,3.0\r\n1,2.0\r", newline="")
    drop_rows_from(metrics, 3)
    assert metrics.read_text().splitlines() == ["step,train_loss", "0,3.0", "1,2.0"]


def test_a_resume_after_a_header_cut_short_writes_it_again(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,train_lo")
    drop_rows_from(metrics, 3)
    resumed = ResumableCSVLogger(tmp_path, name="", version="")
    resumed.log_metrics({"train_loss": 1.5}, step=3)
    resumed.save()
    assert metrics.read_text().splitlines() == ["step,train_loss", "3,1.5"]


def test_a_resumed_run_continues_its_wandb_run_and_a_fresh_one_does_not(tmp_path):
    (tmp_path / "wandb_run_id").write_text("abcd1234")
    resumed = make_loggers("offline", "condense", "tiny", tmp_path, fresh=False)
    fresh = make_loggers("offline", "condense", "tiny", tmp_path, fresh=True)
    assert wandb_run_id(resumed) == "abcd1234"
    assert wandb_run_id(fresh) not in (None, "abcd1234")


def test_wandb_is_started_without_the_setting_it_warns_about(tmp_path, monkeypatch):
    """Every run with W&B printed "wandb: WARNING The anonymous setting has no effect and
    will be removed": Lightning passes it, and no user can act on it."""
    import wandb

    given = {}

    def init(**kwargs):
        given.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "run", None)
    logger = make_loggers("offline", "condense", "tiny", tmp_path)[1]
    with pytest.raises(RuntimeError, match="stop here"):
        _ = logger.experiment  # wandb.init, on first use
    assert given["project"] == "condense" and "anonymous" not in given
