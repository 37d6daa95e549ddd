"""The experiment around the method: one run of the main job and everything it needs, one concept
per module.

config (TrainConfig), devices, seeding, distributed (torchrun: process group, rank 0 writes,
sharded work), run_folder (RunPaths, the folder's layout; state, checkpoints, log, lock),
run_data (splits and slices), fitting (the epoch loop), run_method (a run's Predictor), the stages
(segmenter_stage, boxes_stage, embedding_cache, sam_stage, evaluation with scoring and
box_diagnostics), report and figure (result files), pipeline (the stages in order, resume,
re-evaluation), jobs (train / evaluate as Python calls them), pretraining (the compact SAM) and
prediction (a finished run applied to new volumes).
"""
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import STAGES, TrainConfig

__all__ = ["STAGES", "ConfigError", "TrainConfig"]
