"""How Lightning checkpoints are written and read: atomically, without running code, and
last.ckpt at every validation.

Lightning's own writer goes through an fsspec transaction whose temporary file lies in
the system temp folder; renaming it onto a run dir on another filesystem (a mounted
volume, a network disk) is a copy, which a kill can cut half-way. Here the temporary file
is a sibling of the checkpoint, so the rename is atomic. Reading refuses pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from condense.files import remove_temporaries, replace_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, saving through a sibling temporary file and loading
    with `weights_only=True` whatever the caller asks."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):  # remote storage: Lightning's own way
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Leftovers of a writer killed mid-save: as large as a checkpoint, and never read.
        remove_temporaries(path.parent, path.name)
        replace_atomic(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: Any = None
    ) -> dict[str, Any]:
        # A checkpoint holds tensors and plain values only; anything else is refused, not run.
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class BestAndLastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with last.ckpt written at every validation.

    Lightning 2.6 writes last.ckpt only when the same validation wrote a top-k checkpoint,
    so after a validation that did not improve, last.ckpt stayed at an older step: a
    SIGKILL then lost every step since the last *improvement*, and a finished run's
    last.ckpt was not its final state. Here it follows the best one's decision, so it
    holds the best score as of this validation too.

    Files keep their names (no `last-v1.ckpt`): Lightning versions a name it finds on disk
    but not in its own state, which is what a SIGTERM save before the first validation
    leaves for the next process, and a resume by name would then read the stale file.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**{"enable_version_counter": False, **kwargs})
        # The latest validation's score, whether it improved or not (Lightning's
        # current_score is the latest *improvement*), kept in checkpoints: a run resumed
        # after its final validation has no other record of it to report.
        self.last_score: torch.Tensor | None = None

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.last_score = trainer.callback_metrics.get(self.monitor)  # before the saves
        super().on_validation_end(trainer, module)
        # Skipped when the step was just saved: last.ckpt is then written already.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_score": self.last_score}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(_moved_with_its_folder(state_dict, self.dirpath))
        self.last_score = state_dict.get("last_score")


def _moved_with_its_folder(state: dict[str, Any], dirpath: str | None) -> dict[str, Any]:
    """A ModelCheckpoint state saved in another folder, its paths moved into `dirpath`
    where the best checkpoint came along (a run folder renamed, or its bucket mounted at
    another path); otherwise `state` as it is.

    Lightning restores the best score only where the saved folder is the current one, so a
    moved run forgot it, and its next validation, better or not, overwrote best.ckpt and
    the artifact. A checkpoint from another run's folder (its best file not here) still
    starts a best of its own."""
    saved = state.get("dirpath")
    if not saved or not dirpath or saved == dirpath:
        return state

    def moved(path: Any) -> Any:
        inside = isinstance(path, str) and path.startswith(saved.rstrip(os.sep) + os.sep)
        return os.path.join(dirpath, os.path.relpath(path, saved)) if inside else path

    best = moved(state.get("best_model_path"))
    if not best or not os.path.isfile(best):
        return state
    paths = ("best_model_path", "kth_best_model_path", "last_model_path")
    return {
        **state,
        **{key: moved(state.get(key)) for key in paths if key in state},
        "dirpath": dirpath,
        "best_k_models": {moved(k): v for k, v in state.get("best_k_models", {}).items()},
    }
