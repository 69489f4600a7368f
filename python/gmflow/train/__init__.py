"""Training GM-DiT on cached ImageNet latents (docs/training.md, docs/models.md).

=====================  =====================================================================
``config``             ``TrainConfig`` (JSON round trip, ``key=value`` overrides)
``objective``          ``GMFlowDiffusion``: GM-DiT + spectrum net whose forward is the loss
                       (transition NLL + spectral loss; bf16 autocast around the network only)
``trainer``            ``Trainer``: torchrun / single process, AdamW(8-bit), warm-up, clipping with
                       a non-finite guard, EMA ramp-up, TensorBoard, exact resume
``checkpoint``         atomic ``iter_N.pth`` + ``latest.pth``, retention, safe resume selection
``validation``         ``ValidationHook``: EMA samples -> VAE -> FID / IS / precision / recall
=====================  =====================================================================
"""

from .checkpoint import CheckpointCorruptError, find_resume_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, apply_overrides
from .objective import GMFlowDiffusion, LossOutput
from .trainer import Trainer, TrainSummary, build_diffusion, build_optimizer, ema_beta, lr_at

__all__ = [
    "CheckpointCorruptError",
    "GMFlowDiffusion",
    "LossOutput",
    "TrainConfig",
    "TrainSummary",
    "Trainer",
    "apply_overrides",
    "build_diffusion",
    "build_optimizer",
    "ema_beta",
    "find_resume_checkpoint",
    "load_checkpoint",
    "lr_at",
    "save_checkpoint",
]
