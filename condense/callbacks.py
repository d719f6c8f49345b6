"""Training-time callbacks that show what the condenser has learned, beyond a loss."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from condense.generate import generate
from condense.samples import Sample

GENERATION_COLUMNS = ["step", "task", "prompt", "reference", "output"]


class LogGenerations(Callback):
    """After each validation, logs the decoder's greedy outputs from condensed contexts for
    a few fixed validation samples (the first of each task) as a W&B table, so a run can
    be watched learning content, not only lowering a loss. Does nothing without W&B.

    Args:
        samples: The validation samples; the first one of each task is shown.
        max_new_tokens: Generation budget per sample (kept small: this runs at every check).
    """

    def __init__(self, samples: list[Sample], max_new_tokens: int = 48):
        shown: dict[str, Sample] = {}
        for sample in samples:
            shown.setdefault(sample.task, sample)
        self.samples = list(shown.values())
        self.max_new_tokens = max_new_tokens
        self.rows: list[list] = []

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not wandb or not self.samples or not trainer.is_global_zero:
            return
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        condenser = module.condenser
        was_training = condenser.training
        condenser.eval()
        # Frozen weights may be bf16 and trained ones fp32: the precision plugin's context
        # is what makes them meet, as in the training step.
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            condensed = condenser.condense([s.context for s in self.samples])
            outputs = generate(
                condenser, condensed, [s.prompt for s in self.samples], self.max_new_tokens
            )
        condenser.train(was_training)
        # W&B tables are immutable once logged: log the whole history each time.
        self.rows += [
            [trainer.global_step, s.task, s.prompt, s.completion, out]
            for s, out in zip(self.samples, outputs)
        ]
        wandb[0].log_table("val/generations", GENERATION_COLUMNS, self.rows)

    # The history goes into checkpoints: a resumed run's tables would otherwise start again
    # and its newest one lose every step before the resume.
    def state_dict(self) -> dict[str, list[list]]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, list[list]]) -> None:
        self.rows = list(state_dict.get("rows", []))
