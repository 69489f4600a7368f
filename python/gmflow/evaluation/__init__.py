"""Evaluation: Inception metrics and the sampling sweep (docs/training.md#validation, docs/training.md#evaluation-sweep,
docs/training.md#metrics).

=====================  =====================================================================
``metrics``            ``frechet_distance``, ``inception_score``, ``precision_recall`` (k-NN,
                       k = 3), ``InceptionFeatureNet`` (local TorchScript Inception-v3),
                       ``InceptionMetrics``, ``ReferenceStats`` / ``load_reference_stats``
``sampling``           ``EvalSetting`` (the ``SamplerSpec`` of a GM solver, NFE, sub-steps, guidance), the
                       deterministic per-item test set, ``evaluate_setting``
``sweep``              ``run_sweep``: the docs/training.md#evaluation-sweep grid, resumable, a results table
=====================  =====================================================================
"""

from .metrics import (
    InceptionFeatureNet,
    InceptionMetrics,
    ReferenceStats,
    feature_statistics,
    frechet_distance,
    images_to_uint8,
    inception_score,
    knn_radii,
    load_reference_stats,
    precision_recall,
    save_reference_stats,
)
from .sampling import EvalSetting, decode_latents, evaluate_setting, item_labels, item_noise, sample_latents

__all__ = [
    "EvalSetting",
    "InceptionFeatureNet",
    "InceptionMetrics",
    "ReferenceStats",
    "decode_latents",
    "evaluate_setting",
    "feature_statistics",
    "frechet_distance",
    "images_to_uint8",
    "inception_score",
    "item_labels",
    "item_noise",
    "knn_radii",
    "load_reference_stats",
    "precision_recall",
    "sample_latents",
    "save_reference_stats",
]
