"""A job's models and data, built from its config (condense.build)."""

from __future__ import annotations

import shutil

import pytest

from condense.build import build
from condense.weights import load_tokenizer
from tests.conftest import tiny_config


def test_a_decoder_without_an_eos_token_is_warned_of(tiny_pair, tmp_path):
    """Its completions trained without an end and generation ran to its budget, without
    a word."""
    decoder = tmp_path / "decoder"
    shutil.copytree(tiny_pair[1], decoder)
    tokenizer = load_tokenizer(str(decoder))
    tokenizer.eos_token = None
    tokenizer.save_pretrained(decoder)
    cfg = tiny_config(tiny_pair[0], str(decoder), tmp_path / "run")
    with pytest.warns(UserWarning, match="has no eos token: completions train without an end"):
        build(cfg, "32-true")
