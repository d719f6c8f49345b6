"""Tokens in the environment never reach what a run writes or prints."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import yaml

from tests.conftest import tiny_config


def test_planted_tokens_are_in_no_file_and_no_output(tiny_pair, tmp_path):
    """A `condense train` run on the tiny pair, W&B offline, with HF_TOKEN and
    WANDB_API_KEY set to unique values: every file it writes (run dir, W&B's files, caches
    and temporary files, all kept under tmp_path by HOME and TMPDIR) and its stdout and
    stderr are searched for them."""
    secret = uuid.uuid4().hex
    tokens = {"HF_TOKEN": f"hf_{secret}", "WANDB_API_KEY": f"{secret}deadbeef"}
    home, tmp, cwd = (tmp_path / d for d in ("home", "tmp", "cwd"))
    for folder in (home, tmp, cwd):
        folder.mkdir()
    cfg = tiny_config(*tiny_pair, cwd / "run", max_steps=2, wandb="offline")
    (cwd / "job.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    env = {
        **os.environ,
        **tokens,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    out = subprocess.run(
        [sys.executable, "-m", "condense", "train", "--config", "job.yaml"],
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    # The run did write what could carry a token: checkpoints, artifact, W&B's run files.
    names = {p.name for p in written}
    assert {"last.ckpt", "summary.json", "config.yaml", "README.md"} <= names
    assert any(p.suffix == ".wandb" for p in written)
    for needle in {secret, *tokens.values()}:
        needle = needle.encode()
        assert needle not in out.stdout and needle not in out.stderr
        leaked = [str(p) for p in written if needle in p.read_bytes()]
        assert not leaked
