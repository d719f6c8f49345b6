"""Training-time callbacks: sample generations reach W&B; the artifact records its run."""

from __future__ import annotations

import json

import pytest

from condense.callbacks import GENERATION_COLUMNS, ExportBest
from condense.synthetic import TASKS
from condense.training import train
from tests.conftest import tiny_config


def test_validation_logs_a_table_of_generations_to_wandb(tiny_pair, tmp_path):
    # bf16-mixed as in the test job: frozen weights in bf16 meet fp32 trained ones.
    cfg = tiny_config(
        *tiny_pair, tmp_path / "run", max_steps=4, wandb="offline", precision="bf16-mixed"
    )
    train(cfg)
    tables = sorted((tmp_path / "run" / "wandb").glob("offline-run-*/files/media/table/**/*.json"))
    assert tables, "no W&B table was written"
    newest = max(tables, key=lambda p: len(json.loads(p.read_text())["data"]))
    table = json.loads(newest.read_text())
    assert table["columns"] == GENERATION_COLUMNS
    # One row per task at each of the two validations inside fit (steps 2 and 4).
    assert sorted((row[0], row[1]) for row in table["data"]) == sorted(
        (step, task) for step in (2, 4) for task in TASKS
    )
    assert all(isinstance(row[4], str) for row in table["data"])


def test_a_resumed_run_logs_the_generations_from_before_it_too(tiny_pair, tmp_path):
    # W&B tables are immutable, so each one logged holds the whole history: a resumed run
    # used to start it again, and its newest table lost the steps before the resume.
    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=2, wandb="offline"))
    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=4, wandb="offline"))
    tables = (tmp_path / "run" / "wandb").glob("offline-run-*/files/media/table/**/*.json")
    newest = max(tables, key=lambda p: len(json.loads(p.read_text())["data"]))
    steps = [row[0] for row in json.loads(newest.read_text())["data"]]
    assert steps == [2] * len(TASKS) + [4] * len(TASKS)


@pytest.mark.parametrize("data", ["synthetic", "d.jsonl"])
def test_an_artifact_records_the_synthetic_sets_shape_only_for_a_run_on_it(data, tmp_path):
    """A run on a file had a model card listing 2000 synthetic passages it never read."""
    cfg = tiny_config("e", "d", tmp_path, data=data)
    recorded = ExportBest(tmp_path, cfg).extra
    assert ("synthetic_passages" in recorded) == (data == "synthetic")
    assert ("synthetic_facts" in recorded) == (data == "synthetic")
