"""Run by tests/test_ddp.py as `python -m tests.ddp_probe OUT_DIR [condense train flags]`.

`condense train`, with each process writing the samples it trained on and its final weights to
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
train_step = CondenseModule.training_step


def recording_step(self, batch, batch_idx):
    for context, text in zip(batch["context_ids"], batch["input_ids"]):
        seen.append([*context.tolist(), -1, *text.tolist()])  # a sample, padding and all
    return train_step(self, batch, batch_idx)


def save_at_the_end(self):
    weights = {k: v.detach().clone() for k, v in self.condenser.trainable_state_dict().items()}
    torch.save({"weights": weights, "samples": seen}, out / f"rank{self.global_rank}.pt")


CondenseModule.training_step = recording_step
CondenseModule.on_train_end = save_at_the_end
main(["train", *sys.argv[2:]])
