"""Random number generators' state in checkpoints, so a resumed run draws what an
uninterrupted one would have: the same dropout masks (LoRA dropout, an encoder with
dropout in training mode), hence bit-identical weights.

Lightning does not save this state; it only seeds once at the start, and a resumed run
started from that seed would replay the first steps' draws.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's, torch's CPU and (when in use) CUDA generators' state, as tensors
    and plain values only: what a checkpoint loaded with weights_only=True may hold."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's own GPU only: a DDP rank draws from no other, and restoring every
        # visible GPU's state would fail where a resume sees fewer GPUs, and give other
        # ranks the never-drawn state of GPUs that rank 0 did not use.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` returned."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every GPU's, rank 0's first
            cuda = cuda[0]
        torch.cuda.set_rng_state(cuda)


class ResumeRandomState(Callback):
    """Keeps the generators' state in every checkpoint and restores it just before the
    first step of a resumed run, so nothing that runs between loading and training (the
    data loader's set-up, Lightning's own) can move it.

    Under DDP the checkpoint holds global rank 0's state and every rank gets it back;
    all ranks are seeded alike at the start, so their draws were the same anyway.
    """

    def __init__(self):
        self._loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._loaded is not None:
            set_rng_state(self._loaded)
            self._loaded = None
