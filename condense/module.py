"""The LightningModule: one training step, one validation step, the optimizer groups,
and checkpoints that hold only the trainable state."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from transformers import get_cosine_schedule_with_warmup

from condense.config import OptimConfig
from condense.model import IGNORE_INDEX, Condenser


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose trainable tensors are not this model's."""


class CondenseModule(L.LightningModule):
    """Trains a `Condenser`; the Trainer owns the loop, devices and precision.

    Args:
        condenser: The model, with its frozen decoder inside.
        optim: Learning rates, weight decay, warmup, clipping.
        max_steps: Length of the cosine decay.
    """

    def __init__(self, condenser: Condenser, optim: OptimConfig, max_steps: int):
        super().__init__()
        self.condenser = condenser
        self.optim = optim
        self.max_steps = max_steps
        # Checkpoints hold only the trainable state, so loading one must not ask for the
        # frozen weights it deliberately left out.
        self.strict_loading = False
        self.val_loss_initial: float | None = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self.condenser(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def on_train_epoch_start(self) -> None:
        # Lightning calls set_epoch only on a DataLoader's sampler, not on a custom batch
        # sampler, so a new epoch would replay the same batch order without this.
        batch_sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(self.current_epoch)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Lightning validates at its interval, not at max_steps; asking it to stop on the
        # last step makes it validate (and checkpoint) there too, so the final weights
        # always have a val_loss and can be the best checkpoint.
        if self.trainer.global_step >= self.trainer.max_steps:
            self.trainer.should_stop = True

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        condensed = self.condenser.encode(batch["context_ids"], batch["context_mask"])
        text = batch["input_ids"], batch["attention_mask"]
        loss, targets = self.condenser.decoder_loss(condensed, *text, batch["labels"])
        # Weighted by target tokens, so val_loss is the mean over tokens, not over batches.
        self.log("val_loss", loss, prog_bar=True, batch_size=int(targets), sync_dist=True)
        # The same targets behind another sample's condensed context: a val_loss that falls
        # while val_loss_wrong falls with it has learned the task's format, not its content.
        partner, has_partner = other_context(batch["context_ids"], batch["context_mask"])
        if has_partner.any():
            labels = batch["labels"].masked_fill(~has_partner[:, None], IGNORE_INDEX)
            wrong, counted = self.condenser.decoder_loss(condensed[partner], *text, labels)
            self.log("val_loss_wrong", wrong, batch_size=int(counted), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.condenser.parameter_groups()
        lrs = {
            "condense": self.optim.lr_condense,
            "projection": self.optim.lr_projection,
            "lora": self.optim.lr_lora,
        }
        params = [
            {"params": groups[name], "lr": lrs[name], "name": name}
            for name in groups
            if groups[name]
        ]
        optimizer = torch.optim.AdamW(params, weight_decay=self.optim.weight_decay, foreach=True)
        schedule = get_cosine_schedule_with_warmup(
            optimizer, self.optim.warmup_steps, self.max_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {f"condenser.{k}" for k in self.condenser.trainable_state_dict()}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable
        }
        checkpoint["val_loss_initial"] = self.val_loss_initial

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Loading is non-strict (the frozen weights are left out on purpose), so check here
        # that the checkpoint holds exactly this condenser's trainable state.
        expected = {f"condenser.{k}" for k in self.condenser.trainable_state_dict()}
        found = set(checkpoint["state_dict"])
        if found != expected:
            missing, extra = sorted(expected - found), sorted(found - expected)
            raise CheckpointMismatchError(
                f"checkpoint does not match this model: {len(missing)} trainable tensors missing"
                f" (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]});"
                " was it trained with other model or LoRA settings?"
            )
        self.val_loss_initial = checkpoint.get("val_loss_initial")


def other_context(
    context_ids: torch.Tensor, context_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, the next row (cyclically) whose context differs, and whether one exists.

    Samples cut from one passage share a context, and length-grouped batches put them side by
    side, so plain "the next row" would often be the right context, not a wrong one.
    """
    batch = context_ids.shape[0]
    rows = torch.arange(batch, device=context_ids.device)
    if batch < 2:
        return rows, torch.zeros_like(rows, dtype=torch.bool)
    ids = context_ids.masked_fill(context_mask == 0, -1)
    same = (ids[:, None] == ids[None]).all(-1)  # (B, B)
    others = (rows[:, None] + rows[None, 1:]) % batch  # (B, B-1): the other rows, in order
    differs = ~same.gather(1, others)
    partner = others.gather(1, differs.float().argmax(1, keepdim=True))[:, 0]
    return partner, differs.any(1)
