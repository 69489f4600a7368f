"""Validation during training (docs/training.md#validation): sample the test set with the EMA model,
decode with the VAE and score FID / IS / precision / recall against local reference statistics.

Everything it needs is a local file named in the config (``vae_path``, ``inception_path``,
``reference_stats``); the hook checks them when the trainer starts, so a missing file is reported at
iteration 0 rather than after the first 20,000 iterations. Sampling uses its own generators: the
training RNG streams are untouched, so validation never changes the training trajectory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from gmflow.data.imagenet import read_class_names
from gmflow.distributed import DistInfo
from gmflow.evaluation.metrics import InceptionFeatureNet, InceptionMetrics, load_reference_stats
from gmflow.evaluation.sampling import EvalSetting, evaluate_setting
from gmflow.flow.spec import SUBSTEP_SOLVERS

from .config import TrainConfig

__all__ = ["ValidationHook"]

logger = logging.getLogger(__name__)


class ValidationHook:
    """``hook(model, iteration) -> {'val_<setting>_fid': ..., ...}`` on every rank (metrics gathered)."""

    def __init__(self, config: TrainConfig, info: DistInfo, work_dir: str | Path, progress: bool = True) -> None:
        self.config, self.info, self.work_dir, self.progress = config, info, Path(work_dir), progress
        missing = [name for name in ("vae_path", "inception_path", "reference_stats") if not getattr(config, name)]
        if missing:
            raise ValueError(f"validation needs {', '.join(missing)} in the config (local files), or disable it "
                             "with val_interval=0 / --no-validate")
        for name in ("vae_path", "inception_path", "reference_stats"):
            path = Path(getattr(config, name))
            if not path.exists():
                raise FileNotFoundError(f"{name} = {path}: not found (validation needs local files; nothing is "
                                        "downloaded)")
        substeps = config.val_substeps if config.val_method in SUBSTEP_SOLVERS else 1
        self.setting = EvalSetting(config.val_method, config.val_nfe, substeps, config.val_guidance)
        self._metrics: InceptionMetrics | None = None
        self._vae = None
        self._class_names = read_class_names(config.class_names) if config.class_names else None

    def _load(self) -> None:
        if self._metrics is not None:
            return
        from gmflow.data.cache import load_vae_for_caching

        device = self.info.device
        net = InceptionFeatureNet(self.config.inception_path, device)
        reference = load_reference_stats(self.config.reference_stats, net)
        self._metrics = InceptionMetrics(net, reference)
        self._vae = load_vae_for_caching(self.config.vae_path, torch.float32, device)

    @torch.no_grad()
    def __call__(self, model, iteration: int, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
        self._load()
        was_training = model.training
        model.eval()
        try:
            result = evaluate_setting(
                model.denoising, self.setting, self.config.val_num_samples, self.config.val_batch_size, self._metrics,
                vae=self._vae, spectrum_net=model.spectrum_net, rank=self.info.rank,
                world_size=self.info.world_size, seed=self.config.seed,
                viz_dir=self.work_dir / "viz" / f"{self.setting.name}_iter{iteration}" if self.config.val_viz_every
                else None, viz_every=max(self.config.val_viz_every, 1), class_names=self._class_names,
                progress=self.progress, amp_dtype=amp_dtype,
            )
        finally:
            model.train(was_training)
        prefix = f"val_{self.setting.name}"
        return {f"{prefix}_{k}": float(v) for k, v in result.items()}
