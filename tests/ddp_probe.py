"""Run by tests/test_ddp.py as `python -m tests.ddp_probe OUT_DIR [condense train flags]`.

`condense train`, with each process writing the samples it trained on, its final weights, and
its starting weights, first batch and first step's (all-reduced) gradients to
OUT_DIR/rank<N>.pt. Lightning's DDP starts the other processes by running this same
command again, so they record too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from condense.__main__ import main
from condense.module import CondenseModule

out = Path(sys.argv[1])
seen: list[list[int]] = []
first: dict = {}
train_step = CondenseModule.training_step
before_step = CondenseModule.on_before_optimizer_step


def trainable(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.condenser.trainable_state_dict().items()}


def recording_step(self, batch, batch_idx):
    if not first:
        first.update(weights=trainable(self), batch={k: v.clone() for k, v in batch.items()})
    for context, text in zip(batch["context_ids"], batch["input_ids"]):
        seen.append([*context.tolist(), -1, *text.tolist()])  # a sample, padding and all
    return train_step(self, batch, batch_idx)


def recording_gradients(self, optimizer):
    if "grads" not in first:
        named = self.condenser.named_parameters()
        first["grads"] = {k: p.grad.clone() for k, p in named if p.grad is not None}
    before_step(self, optimizer)


def save_at_the_end(self):
    record = {"weights": trainable(self), "samples": seen, "first": first}
    torch.save(record, out / f"rank{self.global_rank}.pt")


CondenseModule.training_step = recording_step
CondenseModule.on_before_optimizer_step = recording_gradients
CondenseModule.on_train_end = save_at_the_end
main(["train", *sys.argv[2:]])
