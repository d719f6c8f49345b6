"""Evaluation: metric definitions on hand-made cases, and a run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from condense.config import ModelConfig
from condense.evaluate import _task_scores, exact_match, markdown_table, rouge_l, wrong_partners
from condense.model import Condenser
from condense.samples import Sample
from condense.weights import load_causal_lm


def test_exact_match_normalises_case_punctuation_and_articles():
    assert (
        exact_match(
            ["Paris.", "the Red door", "1 May 1901", "London"],
            ["paris", "red door", "1 May 1901", "Paris"],
        )
        == 0.75
    )


def test_rouge_l_is_the_longest_common_subsequence_f_measure():
    # LCS of "a b c d" and "a c d e" is "a c d": P = R = 3/4.
    assert rouge_l(["a b c d"], ["a c d e"]) == pytest.approx(0.75)
    assert rouge_l(["x y"], ["x y"]) == pytest.approx(1.0)
    assert rouge_l(["x y"], ["z w"]) == pytest.approx(0.0)


def test_gap_closed_is_the_share_of_the_floor_to_ceiling_distance():
    # nll sums / token counts: none 4.0, wrong 3.5, condensed 3.0, full 2.0 nats per token.
    by_cond = {
        "none": [40.0, 1, 10],
        "wrong": [35.0, 2, 10],
        "condensed": [30.0, 5, 10],
        "full": [20.0, 9, 10],
    }
    scores = _task_scores(by_cond)
    assert scores["loss"] == {"none": 4.0, "wrong": 3.5, "condensed": 3.0, "full": 2.0}
    assert scores["gap_closed"] == pytest.approx(0.5)
    assert scores["token_accuracy"]["full"] == pytest.approx(0.9)


def test_wrong_context_always_comes_from_another_group():
    samples = [
        Sample("c1", "p", "x", group="a"),
        Sample("c1", "q", "y", group="a"),
        Sample("c2", "p", "z", group="b"),
    ]
    partners = wrong_partners(samples)
    assert all(samples[j].group != samples[i].group for i, j in enumerate(partners))


def test_markdown_table_has_a_row_per_task_and_metric():
    results = {
        "by_task": {
            "qa": {
                "loss": dict.fromkeys(("none", "wrong", "condensed", "full"), 1.0),
                "gap_closed": None,
                "token_accuracy": dict.fromkeys(("none", "wrong", "condensed", "full"), 0.5),
            }
        }
    }
    table = markdown_table(results)
    assert "| qa | loss | 1.000 | 1.000 | 1.000 | 1.000 |  |" in table
    assert "| qa | token_accuracy |" in table


def test_eval_command_writes_json_png_and_a_table(tiny_pair, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    condenser = Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg)
    condenser.save_pretrained(
        str(tmp_path / "art"),
        max_tokens=64,
        train_data="synthetic",
        seed=0,
        val_size=6,
        synthetic_passages=10,
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "condense",
            "eval",
            "--artifact",
            str(tmp_path / "art"),
            "--limit",
            "6",
            "--out",
            str(tmp_path / "eval.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["samples"] == 6
    assert set(results["by_task"]) == {"reconstruction", "question_answering", "continuation"}
    qa = results["by_task"]["question_answering"]
    assert set(qa["loss"]) == {"none", "wrong", "condensed", "full"} and "exact_match" in qa
    assert "rougeL" in results["by_task"]["reconstruction"]
    assert (tmp_path / "eval.png").stat().st_size > 1000
    assert "| question_answering | loss |" in out.stdout
    # The local artifact's model card now carries the same table, once.
    card = (tmp_path / "art" / "README.md").read_text()
    assert card.count("## Evaluation") == 1 and "| question_answering | loss |" in card
    assert f"condense eval --artifact {tmp_path / 'art'}" in card
