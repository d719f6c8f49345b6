"""Training-time callbacks: what the condenser has learned, beyond a loss, the artifact
of its best weights so far, and progress bars that end where training ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from condense.artifact import save_artifact
from condense.config import TrainConfig
from condense.data import is_synthetic
from condense.generate import generate
from condense.samples import Sample

GENERATION_COLUMNS = ["step", "task", "prompt", "reference", "output"]


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars, also closed when training stops on an exception (SIGTERM,
    Ctrl-C, an error). Left open, they were drawn again below condense's last line ("saved
    step N ...; run the same command again to resume", the error), glued to it."""

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        for name in ("val_progress_bar", "train_progress_bar"):
            try:
                bar = getattr(self, name)
            except TypeError:  # Lightning's "reference has not been set yet": none opened
                continue
            if bar.disable:  # closed already, or never shown (ranks above 0): no stream
                continue
            bar.close()
            # close() ends the bar's line without a flush: into a file (a cloud log) the
            # newline came after the next line, written to the other stream.
            bar.fp.flush()


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


class ExportBest(Callback):
    """Writes the portable artifact whenever validation reaches a new best loss, so the
    artifact folder always holds the best weights so far (the .ckpt files are for resume).
    Lightning runs ModelCheckpoint after every other callback, so the best score read here
    is the best before this validation (None at the first one)."""

    def __init__(self, folder: Path, cfg: TrainConfig):
        self.folder = folder
        # The synthetic set's shape, for a run on it only: a model card listed 2000
        # synthetic passages for a run on a file.
        synthetic = {
            "synthetic_passages": cfg.dataset.synthetic_passages,
            "synthetic_facts": cfg.dataset.synthetic_facts,
        }
        # Enough to rebuild the validation split at evaluation time.
        self.extra = {
            "max_tokens": cfg.dataset.max_tokens,
            "max_characters": cfg.dataset.max_characters,
            "train_data": _as_recorded(cfg.data),
            "seed": cfg.seed,
            "val_size": cfg.dataset.val_size,
            **(synthetic if is_synthetic(cfg.data) else {}),
            "train_steps": 0,
            "training_config": cfg.to_dict(),
        }

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if (
            trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or not trainer.is_global_zero
        ):
            return
        best, current = (
            trainer.checkpoint_callback.best_model_score,
            trainer.callback_metrics.get("val_loss"),
        )
        if current is None or not torch.isfinite(current):
            return
        # Strictly better, as ModelCheckpoint's mode="min" judges it: on a tie, best.ckpt
        # stays at the earlier step, and so does the artifact.
        if best is None or float(current) < float(best):
            self.extra.update(train_steps=trainer.global_step, val_loss=float(current))
            # For eval to tell the run's validation split from one its data gives now.
            self.extra["split_digest"] = trainer.datamodule.split_digest()
            save_artifact(module.condenser, self.folder, self.extra)


def _as_recorded(data: str) -> str:
    """`data` as the artifact records it: a local file or folder by its absolute path, so
    that eval rebuilds the validation split from any working folder."""
    local = not is_synthetic(data) and Path(data).exists()
    return str(Path(data).resolve()) if local else data
