"""TrainConfig built from Python, where no command-line parser checks it first."""

from __future__ import annotations

from pathlib import Path

import pytest

from condense.config import ConfigError, DatasetConfig, ModelConfig, OptimConfig, TrainConfig


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


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: ModelConfig(compile="false"), "model.compile must be true or false, got 'false'"),
        (lambda: DatasetConfig(train_on_prompt="no"), "dataset.train_on_prompt must be true or"),
        (lambda: TrainConfig(max_steps=2.5), "max_steps must be an integer, got 2.5"),
        (lambda: TrainConfig(max_steps="10"), "max_steps must be an integer, got '10'"),
        (lambda: OptimConfig(lr_lora="1e-3"), "optim.lr_lora must be a number, got '1e-3'"),
        (lambda: ModelConfig(num_condense_tokens=True), "must be an integer, got True"),
        (lambda: DatasetConfig(tasks="qa"), "dataset.tasks must be a list (text each) or null"),
        (lambda: TrainConfig(model={"encoder": "x"}), "model must be ModelConfig, got {"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_not_taken(make, said):
    """From Python nothing checked types: "false" turned compile on, "no" trained on the
    prompt, 2.5 steps trained 3, and "10" failed inside a comparison."""
    with pytest.raises(ConfigError) as err:
        make()
    assert said in str(err.value)


def test_values_of_the_right_kind_in_another_form_are_taken_in_the_fields_form():
    """A review of the check found it refused what worked before: an artifact's
    `"alpha": 8.0`, a tuple for a list, a numpy integer."""
    import numpy as np

    assert ModelConfig(encoder=Path("/models/enc")).encoder == "/models/enc"
    assert OptimConfig(lr_lora=1).lr_lora == 1  # an integer is a number
    assert TrainConfig(precision=16, devices=[0, 1]).precision == "16"
    alpha = ModelConfig(lora_alpha=8.0).lora_alpha
    assert alpha == 8 and isinstance(alpha, int)
    assert DatasetConfig(synthetic_facts=(1, 2), tasks=("qa",)).synthetic_facts == [1, 2]
    assert TrainConfig(max_steps=np.int64(5), devices=(0,)).max_steps == 5


def test_a_path_from_the_home_folder_is_expanded(tmp_path, monkeypatch):
    """A job file is read by no shell: `run_dir: ~/runs/x` was a folder named ~ for
    condense and the home folder for Lightning, checkpoints in one, summary in the other."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "enc").mkdir(parents=True)
    cfg = TrainConfig(
        run_dir="~/runs/x",
        data="~/data.jsonl",
        resume="~/last.ckpt",
        model=ModelConfig(encoder="~/models/enc"),
    )
    assert cfg.run_dir == str(tmp_path / "runs" / "x")
    assert (cfg.data, cfg.resume) == (str(tmp_path / "data.jsonl"), str(tmp_path / "last.ckpt"))
    assert cfg.model.encoder == str(tmp_path / "models" / "enc")
    assert TrainConfig(data="synthetic", resume="auto").resume == "auto"


def test_an_empty_task_list_is_refused_naming_null():
    """`--dataset.tasks '[]'` trained on every task, as null does, without a word."""
    with pytest.raises(ConfigError, match=r"^dataset.tasks must name a task \(null keeps every"):
        DatasetConfig(tasks=[])
    assert DatasetConfig(tasks=None).tasks is None


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("num_workers", 10**12, "dataset.num_workers must be 0 to 256"),
        ("num_workers", 257, "dataset.num_workers must be 0 to 256"),
        ("synthetic_passages", 10**12, "dataset.synthetic_passages must be 1 to 1000000"),
    ],
)
def test_counts_that_would_run_away_are_refused_with_their_bound(field, value, said, capsys):
    """1e12 workers forked processes, and 1e12 synthetic passages were generated in
    memory, until the machine ran out of it (its run folder made first). Refused with the
    job, so `condense plan` (which runs nothing) refuses it too."""
    from tests.conftest import command_error

    with pytest.raises(ConfigError, match=f"^{said} .*, got {value}$"):
        DatasetConfig(**{field: value})
    lines = command_error(["plan", "--test", f"--dataset.{field}", str(value)], capsys)
    assert len(lines) == 1 and lines[0].startswith(f"condense: error: {said}")
    assert DatasetConfig(num_workers=256, synthetic_passages=1_000_000).num_workers == 256
