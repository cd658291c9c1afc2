"""Typed, frozen configuration: the schema (``schema.py``, ``finetune.py``), each family's
architecture choices (``families.py``), preset lookup (``presets.py``) and the one loader
(``loader.py``: YAML -> dataclass, dotted ``key=value`` overrides)."""

from bertjax.config.families import families, family_defaults
from bertjax.config.finetune import (EmbeddingConfig, FinetuneConfig, FinetuneTrainConfig,
                                     QaConfig, TaskDataConfig)
from bertjax.config.loader import (apply_overrides, experiment_config, finetune_config, from_dict,
                                   load, load_yaml, model_config, to_dict)
from bertjax.config.presets import find_preset, presets_dir
from bertjax.config.model import CHECKPOINT_NAMES, PRETRAINING_HEADS, TASK_HEADS, ModelConfig
from bertjax.config.schema import (CheckpointConfig, DataConfig, DistillConfig, ExperimentConfig,
                                   MeshConfig, OptimConfig, TrainConfig, check_microbatches)
from bertjax.errors import ConfigError

__all__ = [
    "CHECKPOINT_NAMES", "PRETRAINING_HEADS", "TASK_HEADS", "CheckpointConfig", "ConfigError",
    "DataConfig", "DistillConfig", "EmbeddingConfig", "ExperimentConfig", "FinetuneConfig", "FinetuneTrainConfig",
    "MeshConfig", "ModelConfig", "OptimConfig", "QaConfig", "TaskDataConfig",
    "TrainConfig", "apply_overrides", "check_microbatches", "experiment_config", "families",
    "family_defaults", "find_preset", "finetune_config", "from_dict", "load", "load_yaml",
    "model_config", "presets_dir", "to_dict",
]
