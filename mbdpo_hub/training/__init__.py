"""Training: run configs, the online loop (train / finetune / collect), offline multi-task pretraining, evaluation.

| module | what |
|---|---|
| `config` | `RunConfig`, `FinetuneConfig`, `PretrainConfig` and the one YAML + `key=value` loader |
| `online` | `OnlineTrainer`: the online loop |
| `offline` | `OfflinePretrainer`: multi-task offline pretraining from a dataset |
| `evaluation` | `evaluate`, `record_video`, `plot_learning_curve` |
| `run_folder` | `RunFolder`: the output folder, logs, checkpoints and final outputs both trainers share |
| `checkpoint` | the atomic checkpoint-folder format |
"""

from ..utils import pad_to
from .checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from .config import (MODEL_FIELDS, RUN_FIELDS, FinetuneConfig, PretrainConfig, RunConfig, dump_config,
                     load_dataclass_config, load_finetune_config, load_pretrain_config, load_run_config,
                     parse_overrides, read_config_layers)
from .evaluation import evaluate, plot_learning_curve, record_video
from .offline import OfflinePretrainer, pretrain
from .online import OnlineTrainer
from .run_folder import TRAIN_METRICS, RunFolder

__all__ = ["RunConfig", "FinetuneConfig", "PretrainConfig", "load_run_config", "load_finetune_config",
           "load_pretrain_config", "load_dataclass_config", "read_config_layers", "parse_overrides", "dump_config",
           "OnlineTrainer", "OfflinePretrainer", "pretrain", "evaluate", "record_video", "plot_learning_curve",
           "RunFolder", "TRAIN_METRICS", "latest_checkpoint", "read_checkpoint", "write_checkpoint", "pad_to",
           "MODEL_FIELDS", "RUN_FIELDS"]
