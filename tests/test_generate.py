"""Generation from condensed embeddings: batched and masked."""

from __future__ import annotations

import subprocess
import sys

import torch

from condense.config import ModelConfig
from condense.generate import generate
from condense.model import Condenser
from condense.synthetic import synthetic_samples
from condense.weights import load_causal_lm


def _loaded(tiny_pair, tmp_path) -> Condenser:
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=tiny_pair[0], decoder=tiny_pair[1], num_condense_tokens=4, lora_r=4, lora_alpha=8
    )
    Condenser(load_causal_lm(tiny_pair[0]), load_causal_lm(tiny_pair[1]), cfg).save_pretrained(
        str(tmp_path / "art")
    )
    return Condenser.from_pretrained(str(tmp_path / "art"))


def test_a_batch_generates_what_each_row_generates_alone(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path)
    samples = synthetic_samples(2, seed=31)
    contexts = [samples[0].context, samples[5].context]
    prompts = ["Repeat the passage above word for word.\n", "Who?\n"]  # different lengths: padded
    condensed = condenser.condense(contexts)
    both = generate(condenser, condensed, prompts, max_new_tokens=8)
    alone = [
        generate(condenser, condensed[i : i + 1], prompts[i : i + 1], max_new_tokens=8)[0]
        for i in range(2)
    ]
    assert both == alone
    assert all(isinstance(t, str) for t in both)


def test_no_context_generation_takes_an_empty_condensed_prefix(tiny_pair, tmp_path):
    condenser = _loaded(tiny_pair, tmp_path)
    empty = torch.zeros(2, 0, 48)
    assert len(generate(condenser, empty, ["a\n", "b c\n"], max_new_tokens=4)) == 2


def test_generate_command_prints_a_completion(tiny_pair, tmp_path):
    _loaded(tiny_pair, tmp_path)
    (tmp_path / "context.txt").write_text(synthetic_samples(1, seed=32)[0].context)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "condense",
            "generate",
            "--artifact",
            str(tmp_path / "art"),
            "--context-file",
            str(tmp_path / "context.txt"),
            "--prompt",
            "Who?\n",
            "--max-new-tokens",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-1500:]
