"""condense: train context condensers for frozen decoder LLMs."""

from condense.config import DatasetConfig, ModelConfig, OptimConfig, TrainConfig
from condense.data import CondenseDataModule, load_samples
from condense.model import Condenser
from condense.module import CondenseModule
from condense.samples import Sample
from condense.synthetic import synthetic_samples
from condense.train import train

__all__ = [
    "Condenser",
    "CondenseDataModule",
    "CondenseModule",
    "DatasetConfig",
    "ModelConfig",
    "OptimConfig",
    "Sample",
    "TrainConfig",
    "load_samples",
    "synthetic_samples",
    "train",
]
