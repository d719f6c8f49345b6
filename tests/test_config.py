"""TrainConfig built from Python, where no command-line parser checks it first."""

from __future__ import annotations

from pathlib import Path

import pytest

from condense.config import ConfigError, TrainConfig


def test_a_wandb_setting_other_than_the_four_is_refused():
    """ "of" (for off) ran W&B online, or failed after the models loaded with no API key."""
    with pytest.raises(
        ConfigError, match="wandb must be one of auto, online, offline, off, got 'of'"
    ):
        TrainConfig(wandb="of")
    assert TrainConfig(wandb="off").wandb == "off"


def test_data_given_as_a_path_is_read_as_its_string():
    """A Path was "no data source: give a data file ...", naming the file it was given."""
    assert TrainConfig(data=Path("runs/d.jsonl")).data == "runs/d.jsonl"
