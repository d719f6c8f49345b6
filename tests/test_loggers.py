"""Loggers: W&B never waits on the network; the CSV log keeps a resumed run's history."""

from __future__ import annotations

import time

from condense.loggers import ResumableCSVLogger, wandb_mode


def test_wandb_with_a_key_but_no_server_goes_offline_fast(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    start = time.monotonic()
    assert wandb_mode("auto") == "offline"
    assert time.monotonic() - start < 5


def test_wandb_without_a_key_is_offline_and_off_is_off(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode("auto") == "offline"
    assert wandb_mode("off") is None
    assert wandb_mode("online") == "online"


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
