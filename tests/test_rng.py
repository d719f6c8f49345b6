"""The random state a checkpoint keeps: restored, the same draws come again."""

from __future__ import annotations

import random

import numpy as np
import torch

from condense.rng import rng_state, set_rng_state


def test_restored_state_replays_python_numpy_and_torch_draws():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


class FakeCuda:
    """torch.cuda's random-state calls for a process whose own GPU is one of several."""

    def __init__(self, visible: int):
        self.states = [torch.full((4,), i, dtype=torch.uint8) for i in range(visible)]
        self.current = 0

    def get_rng_state(self, device="cuda"):
        return self.states[self.current].clone()

    def set_rng_state(self, state, device="cuda"):
        self.states[self.current] = state.clone()

    def get_rng_state_all(self):
        return [s.clone() for s in self.states]


def _fake_cuda(monkeypatch, visible: int) -> FakeCuda:
    fake = FakeCuda(visible)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", fake.get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake.set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", fake.get_rng_state_all)
    return fake


def test_a_checkpoint_keeps_only_this_processs_gpu_state(monkeypatch):
    # Saved by rank 0 of an 8-GPU node, resumed by a process that sees one GPU: restoring
    # every GPU's state failed there; each rank gets the state of the GPU rank 0 drew on.
    saver = _fake_cuda(monkeypatch, visible=8)
    state = rng_state()
    assert torch.equal(state["cuda"], saver.states[0])
    resumer = _fake_cuda(monkeypatch, visible=1)
    set_rng_state(state)
    assert torch.equal(resumer.states[0], saver.states[0])


def test_an_older_checkpoint_with_every_gpus_state_still_restores(monkeypatch):
    older = [torch.full((4,), 7 + i, dtype=torch.uint8) for i in range(8)]
    state = {**rng_state(), "cuda": older}
    resumer = _fake_cuda(monkeypatch, visible=2)
    resumer.current = 1
    set_rng_state(state)
    assert torch.equal(resumer.states[1], older[0])
