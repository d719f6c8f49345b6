"""condense: train context condensers for frozen decoder LLMs.

>>> from condense import TrainConfig, train
>>> summary = train(TrainConfig(max_steps=10))

TrainConfig's defaults are the original trainer's shapes (512 condense tokens, contexts
of up to 4096 tokens): a GPU's work, even for the embedded 135M pair it defaults to.
jobs/test.yaml holds CPU-sized ones (`condense train --test`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for editors and type checkers; at run time __getattr__ imports them
    from condense.artifact import import_original
    from condense.config import DatasetConfig, ModelConfig, OptimConfig, TrainConfig
    from condense.data import CondenseDataModule, load_samples
    from condense.model import Condenser
    from condense.module import CondenseModule
    from condense.samples import Sample
    from condense.synthetic import synthetic_samples
    from condense.training import train

# Imported on first use, so that `condense --help` and the config classes do not pay for
# importing torch, Lightning and transformers.
_EXPORTS = {
    "Condenser": "condense.model",
    "CondenseDataModule": "condense.data",
    "CondenseModule": "condense.module",
    "DatasetConfig": "condense.config",
    "ModelConfig": "condense.config",
    "OptimConfig": "condense.config",
    "Sample": "condense.samples",
    "TrainConfig": "condense.config",
    "import_original": "condense.artifact",
    "load_samples": "condense.data",
    "synthetic_samples": "condense.synthetic",
    "train": "condense.training",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'condense' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
