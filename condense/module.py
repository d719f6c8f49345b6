"""The LightningModule: one training step, one validation step, the optimizer groups,
and checkpoints that hold only the trainable state."""

from __future__ import annotations

import pickle
import zipfile
from typing import Any

import lightning as L
import torch
from transformers import get_cosine_schedule_with_warmup

from condense.batches import other_context
from condense.config import OptimConfig, first_line, weights_only_refusal
from condense.model import IGNORE_INDEX, Condenser


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose trainable tensors are not this model's."""


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a NaN or infinite loss; training stopped."""


# A validation batch's (input_ids, attention_mask), labels and its one passage id.
Unpaired = tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]


def _shaped_by(name: str) -> str:
    """The setting that gives the trainable tensor `name` its shape, in words."""
    if "lora_" in name:
        return "model.lora_r, or encoder"
    if "condense_tokens" in name:
        return "model.num_condense_tokens, or encoder"
    # Norm and projection read n_last_hidden_states encoder layers side by side.
    return "model.n_last_hidden_states, encoder or decoder"


class CondenseModule(L.LightningModule):
    """Trains a `Condenser`; the Trainer owns the loop, devices and precision.

    Args:
        condenser: The model, with its frozen decoder inside.
        optim: Learning rates, weight decay, warmup, clipping.
        max_steps: Length of the cosine decay.
        loss_scaled: Whether training scales the loss (fp16's GradScaler, "16-mixed").
    """

    def __init__(
        self, condenser: Condenser, optim: OptimConfig, max_steps: int, loss_scaled: bool = False
    ):
        super().__init__()
        self.condenser = condenser
        self.optim = optim
        self.max_steps = max_steps
        self.loss_scaled = loss_scaled
        # Checkpoints hold only the trainable state, so loading one must not ask for the
        # frozen weights it deliberately left out.
        self.strict_loading = False
        self.val_loss_initial: float | None = None
        self.skipped_steps = 0  # steps skipped for a non-finite loss, over the whole run
        self.bad_in_a_row = 0
        self._loss_finite: torch.Tensor | None = None
        # Validation: the last batch's condensed contexts and passage ids, and batches of
        # one passage still waiting for another passage's contexts (validation_step).
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None
        self._unpaired: list[Unpaired] = []

    def on_train_start(self) -> None:
        # from_pretrained returns models in eval mode and Lightning keeps the modes it
        # finds, so without this the encoder's own dropout ran only where gradient
        # checkpointing happened to call train(): on GPU, not on CPU.
        self.condenser.train()
        # The optimizer comes back from a checkpoint as the earlier run left it: its rates
        # where that run's schedule ended (0 at its end, so a finished run given a higher
        # max_steps would not train), its base rates and weight decay that run's. Put this
        # run's settings in and the rates where this run's schedule is; in any other start
        # they are there already.
        settings = self._group_settings()
        changed: set[str] = set()
        for config in self.trainer.lr_scheduler_configs:
            schedule = config.scheduler
            if not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
                continue  # configure_optimizers makes one; another kind keeps its rates
            groups = schedule.optimizer.param_groups
            for i, (group, factor) in enumerate(zip(groups, schedule.lr_lambdas)):
                if group.get("name") in settings:
                    lr, decay = settings[group["name"]]
                    if group.get("initial_lr", lr) != lr:
                        changed.add(f"optim.lr_{group['name']}")
                    if group["weight_decay"] != decay:
                        changed.add("optim.weight_decay")
                    group["weight_decay"] = decay
                    schedule.base_lrs[i] = group["initial_lr"] = lr
                group["lr"] = schedule.base_lrs[i] * factor(schedule.last_epoch)
        if changed:
            self.print(
                f"condense: resumed with a new {', '.join(sorted(changed))}: the schedule goes"
                " on from its step with the new settings"
            )

    def _group_settings(self) -> dict[str, tuple[float, float]]:
        """(base learning rate, weight decay) of each optimizer group, by group name."""
        lrs = {
            "condense": self.optim.lr_condense,
            "projection": self.optim.lr_projection,
            "lora": self.optim.lr_lora,
        }
        return {name: (lr, self.optim.weight_decay) for name, lr in lrs.items()}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, tokens = self.condenser(batch)
        self._loss_finite = torch.isfinite(loss.detach())
        loss, mean = self._over_all_processes(loss, tokens)
        self.log("train_loss", mean, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        # Returned even when it is NaN: returning None would skip the step too, but Lightning
        # refuses that under DDP, where every rank must run backward. The step is dropped
        # in on_before_optimizer_step instead.
        return loss

    def _over_all_processes(
        self, loss: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's mean loss over its `tokens` target tokens, made one to
        backpropagate and one to log over the target tokens of every process's batch.

        DDP averages the processes' gradients, so their mean losses used to weigh the same
        however many tokens each held: one process's 50 answer tokens counted as much as
        another's 4000 reconstruction tokens, and the job optimised another mix on each
        number of GPUs. Scaled by its share of the step's tokens (times the processes, which
        DDP's average divides out), every token of the effective batch counts the same, as
        one process given the whole batch would count it."""
        processes = self.trainer.world_size
        if processes == 1:
            return loss, loss
        sums = torch.stack([loss.detach().float() * tokens, tokens.float()])
        nll, total = self.trainer.strategy.reduce(sums, reduce_op="sum")
        return loss * (tokens * processes / total), nll / total

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip a step whose loss was NaN or infinite: with no gradients, AdamW leaves the
        weights and its state untouched (clipping and the step then see nothing). After
        `optim.max_bad_steps` such steps in a row, stop with NonFiniteLossError: nothing is
        saved on the way out, so the checkpoints on disk are the last good ones."""
        bad = self._loss_finite is not None and not bool(self._loss_finite)
        # One rank's NaN is every rank's (gradients are averaged): all skip together.
        if not self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            self.bad_in_a_row = 0
            return
        optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        step = self.trainer.global_step + 1
        self.print(f"condense: step {step}: loss is not finite, step skipped")
        if self.bad_in_a_row >= self.optim.max_bad_steps:
            raise NonFiniteLossError(
                f"training stopped: {self.bad_in_a_row} steps in a row (steps"
                f" {step - self.bad_in_a_row + 1}-{step}) had a NaN or infinite loss"
                f" (optim.max_bad_steps={self.optim.max_bad_steps})"
            )

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
        # Summed by target tokens, so val_loss is the mean over tokens, not over batches.
        self._totals[0] += torch.stack([loss.detach().float() * targets, targets])
        # The same targets behind another passage's condensed context: a val_loss that falls
        # while val_loss_wrong falls with it has learned the task's format, not its content.
        groups = batch["group"]
        partner, has_partner = other_context(groups)
        if has_partner.any():
            self._score_wrong(condensed[partner], text, batch["labels"], has_partner)
        # A batch of one passage (at validation's batch of 2, a passage's question and its
        # reconstruction often are) stands behind another batch's contexts instead: the one
        # before, or the next that differs. Otherwise its targets would be missing from
        # val_loss_wrong alone, and the gap would compare two sets of targets.
        waiting = self._unpaired
        if not has_partner.any():
            waiting = [*waiting, (text, batch["labels"], groups[0])]
        pools = [p for p in (self._previous, (condensed.detach(), groups)) if p is not None]
        self._unpaired = [w for w in waiting if not self._pair_across(w, pools)]
        self._previous = (condensed.detach(), groups)

    def _score_wrong(
        self,
        condensed: torch.Tensor,
        text: tuple[torch.Tensor, torch.Tensor],
        labels: torch.Tensor,
        scored: torch.Tensor,
    ) -> None:
        """Add the decoder's loss on `text` behind `condensed` (B, N, D), over the rows in
        `scored`, to val_loss_wrong's totals."""
        labels = labels.masked_fill(~scored[:, None], IGNORE_INDEX)
        wrong, counted = self.condenser.decoder_loss(condensed, *text, labels)
        self._totals[1] += torch.stack([wrong.detach().float() * counted, counted])

    def _pair_across(
        self,
        unpaired: Unpaired,
        pools: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> bool:
        """Score a batch of one passage behind the first of `pools` (condensed contexts and
        their passage ids) that holds another passage, its rows in turn; whether one did."""
        text, labels, group = unpaired
        for condensed, groups in pools:
            others = (groups != group).nonzero()[:, 0]
            if len(others):
                rows = others[torch.arange(labels.shape[0], device=others.device) % len(others)]
                every = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
                self._score_wrong(condensed[rows], text, labels, every)
                return True
        return False

    def on_validation_epoch_start(self) -> None:
        # Rows: the right context, a wrong one; columns: summed loss, target tokens.
        self._totals = torch.zeros(2, 2, device=self.device)
        self._previous = None
        self._unpaired = []

    def on_validation_epoch_end(self) -> None:
        # Summed here rather than logged per batch. Lightning syncs a logged mean as the
        # ranks' averages of its sum and of its count, the count as an integer, which
        # truncates when the ranks' token counts add up to an odd number: the tiny job's
        # val_loss on two processes came out 0.25% high. And a rank whose samples are all
        # one passage has no wrong partner: under DDP a metric that some ranks log and
        # others do not would hang the reduction. One reduction for both.
        self._previous, self._unpaired = None, []  # nothing left to pair; free the memory
        (loss_sum, count), (wrong_sum, wrong_count) = self.trainer.strategy.reduce(
            self._totals, reduce_op="sum"
        )
        self.log("val_loss", loss_sum / count, prog_bar=True)  # the same on every rank
        if wrong_count > 0:
            self.log("val_loss_wrong", wrong_sum / wrong_count, rank_zero_only=True)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.condenser.parameter_groups()
        settings = self._group_settings()
        params = [
            {"params": groups[name], "lr": settings[name][0], "name": name}
            for name in groups
            if groups[name]
        ]
        # Fused: one kernel per step for all parameters; on the bench job's CPU step it
        # took 6% off the step time against foreach. Not under fp16's GradScaler, where a
        # fused optimizer unscales inside its step, after clipping has already run.
        kind = {"foreach": True} if self.loss_scaled else {"fused": True}
        optimizer = torch.optim.AdamW(params, weight_decay=self.optim.weight_decay, **kind)
        schedule = get_cosine_schedule_with_warmup(
            optimizer, self.optim.warmup_steps, self.max_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the global gradient norm to `optim.grad_clip`.

        Lightning's AMP plugin refuses to clip for any fused optimizer, though only fp16's
        GradScaler makes that wrong, and fp16 gets a foreach optimizer here; under bf16 and
        fp32 nothing is scaled, so the gradients are clipped directly."""
        if gradient_clip_val:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val, foreach=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {f"condenser.{k}" for k in self.condenser.trainable_state_dict()}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable
        }
        checkpoint["val_loss_initial"] = self.val_loss_initial
        checkpoint["skipped_steps"] = self.skipped_steps
        # Not in any tensor's shape, but the scale of every LoRA update: see check_checkpoint.
        checkpoint["lora_alpha"] = self.condenser.cfg.lora_alpha
        # A resume loads these commits, not a newer one the Hub has since (training.py).
        checkpoint["base_models"] = self.condenser.base_models()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Loading is non-strict (the frozen weights are left out on purpose), so check here
        # that the checkpoint holds exactly this condenser's trainable state.
        self.check_checkpoint_state(checkpoint["state_dict"])
        self.val_loss_initial = checkpoint.get("val_loss_initial")
        self.skipped_steps = checkpoint.get("skipped_steps", 0)

    def check_checkpoint_state(self, found: dict[str, torch.Tensor]) -> None:
        """Refuse a checkpoint whose tensors are not exactly this condenser's trainable
        ones, by name and shape (a changed lora_r or num_condense_tokens keeps the names)."""
        expected = {f"condenser.{k}": v for k, v in self.condenser.trainable_state_dict().items()}
        if found.keys() != expected.keys():
            missing = sorted(expected.keys() - found.keys())
            extra = sorted(found.keys() - expected.keys())
            raise CheckpointMismatchError(
                f"checkpoint does not match this model: {len(missing)} trainable tensors missing"
                f" (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]});"
                " was it trained with other model or LoRA settings?"
            )
        resized = [k for k, v in expected.items() if tuple(found[k].shape) != tuple(v.shape)]
        if resized:
            name = resized[0]
            raise CheckpointMismatchError(
                f"checkpoint does not match this model: {len(resized)} trainable tensors of"
                f" another shape (e.g. {name}: {tuple(found[name].shape)} in the checkpoint,"
                f" {tuple(expected[name].shape)} here); was it trained with another"
                f" {_shaped_by(name)}?"
            )

    def check_checkpoint(self, path: str) -> int:
        """Check a checkpoint to resume from before anything is written: readable, tensors
        and plain values only, and this model's trainable tensors. Memory-mapped, so the
        tensors themselves are not read. Returns the training step it was saved at."""
        if not zipfile.is_zipfile(path):  # what torch.save writes
            raise CheckpointMismatchError(f"{path}: not a readable checkpoint (not a torch file)")
        try:
            checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
            refusal = weights_only_refusal(err)
            if refusal:
                raise CheckpointMismatchError(f"{path}: refused: {refusal}") from None
            reason = first_line(err)
            raise CheckpointMismatchError(f"{path}: not a readable checkpoint ({reason})") from None
        self.check_checkpoint_state(checkpoint.get("state_dict", {}))
        alpha, here = checkpoint.get("lora_alpha"), self.condenser.cfg.lora_alpha
        if alpha is not None and alpha != here:  # checkpoints from before it was kept: taken
            raise CheckpointMismatchError(
                f"{path} was trained with model.lora_alpha {alpha}, not {here}: its LoRA"
                f" updates would be scaled {here / alpha:g}x; give --model.lora_alpha {alpha}"
                " to go on with it"
            )
        return int(checkpoint.get("global_step", 0))
