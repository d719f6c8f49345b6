"""Two processes on CPU (Lightning DDP over gloo) train the same model on different data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from condense.__main__ import main
from tests.conftest import job_under_test

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["tiny", "test"])
def test_two_processes_train_on_disjoint_batches_and_agree_on_the_weights(
    kind, tiny_pair, tmp_path
):
    steps = 4 if kind == "tiny" else 2
    # The tiny job's validation: 2 of its 3 batches.
    limit = {"val_batches": 2} if kind == "tiny" else {}
    job, extra = job_under_test(kind, tiny_pair, tmp_path, steps, 2, wandb="off", **limit)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "tests.ddp_probe", str(tmp_path), "--config", str(job),
               "--run-dir", str(run_dir), "--devices", "2", "--accelerator", "cpu",
               *extra]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("WANDB_SERVICE", None)  # see tests/test_launch.py::_launch
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    first, second = ranks[0]["weights"], ranks[1]["weights"]
    assert set(first) == set(second)
    assert all(torch.equal(first[k], second[k]) for k in first)  # DDP kept them in step
    # Each rank trained on its own share: a batch of 4 per step, no sample in both.
    samples = [{str([t for t in row if t]) for row in r["samples"]} for r in ranks]
    assert len(ranks[0]["samples"]) == len(ranks[1]["samples"]) == 4 * steps
    assert not samples[0] & samples[1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == steps
    # The weights trained are the ones checkpointed: rank 0 alone wrote the files.
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(saved[f"condenser.{k}"], first[k]) for k in first)
    if kind == "tiny":
        # val_batches 2 is the epoch's first 2 validation batches, one to each rank
        # (Lightning's own limit, per rank, would have taken all 3): the initial validation
        # loss is the one a single process computes over those 2.
        alone = tmp_path / "alone"
        main(["train", "--config", str(job), "--run-dir", str(alone), "--accelerator", "cpu"])
        single = json.loads((alone / "summary.json").read_text())["val_loss_initial"]
        assert summary["val_loss_initial"] == pytest.approx(single, rel=1e-5)
        # The first step's gradient is one process's over both batches, every target token
        # counted once; the mean of the ranks' own means weighed their tokens unequally.
        expected, tokens = _one_process_gradient(tiny_pair, tmp_path, [r["first"] for r in ranks])
        assert tokens[0] != tokens[1]  # else both weightings agree
        for rank in ranks:
            got = rank["first"]["grads"]
            assert set(got) == set(expected)
            for name, grad in expected.items():
                torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-7)


def _one_process_gradient(tiny_pair, folder, firsts) -> tuple[dict, list[int]]:
    """The gradient of the tiny job's condenser at the ranks' starting weights over their
    first batches together (a mean over all their target tokens), and each batch's tokens."""
    from condense.build import condense_module
    from condense.weights import load_causal_lm
    from tests.conftest import tiny_config

    cfg = tiny_config(*tiny_pair, folder)
    module = condense_module(cfg, load_causal_lm(cfg.model.encoder),
                             load_causal_lm(cfg.model.decoder), "32-true")  # fmt: skip
    condenser = module.condenser
    condenser.load_state_dict(firsts[0]["weights"], strict=False)
    condenser.train()
    tokens = []
    for first in firsts:
        loss, count = condenser(first["batch"])
        (loss * count).backward()  # the batch's summed loss: its gradients add up
        tokens.append(int(count))
    total = sum(tokens)
    grads = {k: p.grad / total for k, p in condenser.named_parameters() if p.grad is not None}
    return grads, tokens
