"""Episode datasets: parquet format (HF ``datasets``), replay-buffer filling, window sampling and the
TD-MPC2 mt30/mt80 chunk importer.  See ``mbdpo_hub.data.format`` for the on-disk layout."""

from .format import DatasetWriter, dataset_features, write_dataset_card
from .reading import (dataset_arrow_table, episode_table, fill_buffer, load_dataset_folder, read_info, read_stats,
                      read_tasks)
from .tdmpc2 import convert_dataset_main, convert_tdmpc2_chunks, load_tdmpc2_chunk, tdmpc2_task_list

__all__ = [
    "DatasetWriter",
    "convert_dataset_main",
    "convert_tdmpc2_chunks",
    "dataset_arrow_table",
    "dataset_features",
    "episode_table",
    "fill_buffer",
    "load_dataset_folder",
    "load_tdmpc2_chunk",
    "read_info",
    "read_stats",
    "read_tasks",
    "tdmpc2_task_list",
    "write_dataset_card",
]
