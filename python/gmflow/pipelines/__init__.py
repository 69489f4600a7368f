"""Inference pipelines and their checkpoint folders (docs/models.md#pipeline-folder, docs/models.md#gmditpipeline).

==========================  ===================================================================
``GMDiTPipeline``           class-conditional ImageNet sampling (GM-ODE / GM-SDE, guidance,
                            second order) with a GM-DiT, diffusers-style ``__call__``
``checkpoint``              load / save the official folder layout (``model_index.json``,
                            ``transformer/``, ``spectrum_net/``, ``scheduler/``, ``vae/``)
==========================  ===================================================================
"""

from .checkpoint import CheckpointError, MissingCheckpointFileError, ModelIndex, read_model_index
from .gmdit_pipeline import GMDiTPipeline, GMDiTPipelineOutput

__all__ = [
    "CheckpointError",
    "GMDiTPipeline",
    "GMDiTPipelineOutput",
    "MissingCheckpointFileError",
    "ModelIndex",
    "read_model_index",
]
