"""The machinery of the main job (``python -m sammed_fast.train``), one concept per module:

config (TrainConfig), run_folder (config/state/checkpoints/log/TensorBoard), determinism (seeds,
devices), run_data (splits and slices), fitting (the epoch loop), losses, segmenter_stage,
boxes_stage, sam_model, embedding_cache, sam_stage, scoring, evaluation, report, figure,
pipeline (the stages in order, resume, re-evaluation), and distributed (several processes under
torchrun: the process group, rank 0 writes, sharded work).
"""
from sammed_fast.engine.config import STAGES, ConfigError, TrainConfig

__all__ = ["STAGES", "ConfigError", "TrainConfig"]
