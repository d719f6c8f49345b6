"""condense: train context condensers for frozen decoder LLMs.

>>> from condense import TrainConfig, train
>>> summary = train(TrainConfig(max_steps=10))
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "train": "condense.train",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'condense' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
