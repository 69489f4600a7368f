"""Class-conditional ImageNet sampling with GM-DiT (docs/models.md#gmditpipeline), diffusers-style.

::

    from gmflow.pipelines import GMDiTPipeline
    from gmflow.flow import GMFlowSDEScheduler
    pipe = GMDiTPipeline.from_pretrained("path/to/gmflow_imagenet_k8_ema", variant="bf16",
                                         torch_dtype=torch.bfloat16).to("cuda")
    ids = pipe.get_label_ids(["jay", "magpie"])
    # GM-ODE 2 (the defaults): 32 steps x 4 sub-steps, probabilistic guidance 0.45
    images = pipe(ids, generator=torch.Generator().manual_seed(42)).images
    # GM-SDE 2: swap the scheduler, draw x0 from the GM (spectral sampling), no sub-steps
    pipe.scheduler = GMFlowSDEScheduler.from_config(pipe.scheduler.config)
    images = pipe(ids, num_inference_substeps=1, output_mode="sample",
                  generator=torch.Generator().manual_seed(42)).images

The loop itself is :func:`gmflow.flow.gmflow_sample`; the pipeline adds the labels (conditional batch
first, null class ``num_embeds_ada_norm`` second), runs the transformer in its own dtype (e.g.
bfloat16) while all GM math stays in float32, and decodes with the VAE. Every random draw (initial
noise, GM / spectral samples, SDE noise) comes from ``generator``: a seeded generator reproduces an
image exactly.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from gmflow import GMFlowInputError
from gmflow.flow.schedulers import FlowEulerODEScheduler, GMFlowSDEScheduler
from gmflow.flow.spec import SamplerSpec
from gmflow.models import GMDiT, SpectrumMLP

from . import checkpoint as ckpt

__all__ = ["GMDiTPipeline", "GMDiTPipelineOutput"]

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class GMDiTPipelineOutput(NamedTuple):
    """``images``: list of PIL images (``'pil'``), float array ``(B, H, W, 3)`` in [0, 1] (``'np'``), tensor
    ``(B, 3, H, W)`` in [0, 1] (``'pt'``), the latents (``'latent'``), or ``None`` without a VAE.
    ``latents``: the sampled (scaled) VAE latents ``(B, C, h, w)``, float32."""

    images: Any
    latents: Tensor


def _label_to_names(id2label: dict[int, str]) -> dict[str, int]:
    labels: dict[str, int] = {}
    for idx, names in id2label.items():
        for name in names.split(","):
            name = name.strip()
            if name:
                labels[name] = int(idx)
    return dict(sorted(labels.items()))


class GMDiTPipeline:
    """``GMDiTPipeline(transformer, spectrum_net=None, vae=None, scheduler=None, id2label=None)``.

    ``transformer``: a :class:`GMDiT`; ``spectrum_net``: a :class:`SpectrumMLP` used by GM-SDE
    (``output_mode='sample'``) for spatially correlated draws (without it pixels are drawn
    independently); ``vae``: diffusers' ``AutoencoderKL`` (optional: without it the pipeline returns
    latents); ``scheduler``: :class:`FlowEulerODEScheduler` (GM-ODE, default) or
    :class:`GMFlowSDEScheduler` (GM-SDE); ``id2label``: ``{id: "name, synonym, ..."}`` for
    :meth:`get_label_ids`.
    """

    def __init__(
        self,
        transformer: GMDiT,
        spectrum_net: SpectrumMLP | None = None,
        vae=None,
        scheduler: FlowEulerODEScheduler | GMFlowSDEScheduler | None = None,
        id2label: dict[int, str] | None = None,
    ) -> None:
        if not isinstance(transformer, GMDiT):
            raise TypeError(f"transformer must be a gmflow.models.GMDiT, got {type(transformer).__name__}")
        self.transformer = transformer
        self.spectrum_net = spectrum_net
        self.vae = vae
        self.scheduler = scheduler if scheduler is not None else FlowEulerODEScheduler()
        self.id2label = {int(k): str(v) for k, v in (id2label or {}).items()}
        self.labels = _label_to_names(self.id2label)
        self._progress_disable = False

    # -- loading / saving -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        variant: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        load_vae: bool = True,
    ) -> "GMDiTPipeline":
        """Loads a local pipeline folder in the official layout (see :mod:`gmflow.pipelines.checkpoint`).

        ``variant`` picks ``diffusion_pytorch_model.<variant>.safetensors`` in every component (``None``:
        the plain file, or the only variant present). ``torch_dtype`` (default float32) is the dtype of
        the transformer, spectrum net and VAE. The VAE needs diffusers (``gmflow[diffusers]``); without
        it (or with ``load_vae=False``, or no ``vae/`` folder) the pipeline returns latents.
        Nothing is downloaded.
        """
        folder = Path(path)
        index = ckpt.read_model_index(folder)
        transformer = ckpt.load_module(GMDiT, folder / "transformer", variant, torch_dtype, device)
        spectrum_net = None
        if index.classes["spectrum_net"] is not None:
            spectrum_net = ckpt.load_module(SpectrumMLP, folder / "spectrum_net", variant, torch_dtype, device)
        scheduler = None
        if index.classes["scheduler"] is not None:
            scheduler = ckpt.load_scheduler(folder / "scheduler", index.classes["scheduler"])
        vae = None
        if load_vae and index.classes["vae"] is not None:
            if (folder / "vae").is_dir():
                vae = ckpt.load_vae(folder / "vae", variant, torch_dtype, device)
            else:
                logger.warning("%s lists a VAE but has no vae/ folder: the pipeline returns latents", folder)
        return cls(transformer, spectrum_net, vae, scheduler, index.id2label)

    def save_pretrained(self, path: str | os.PathLike, variant: str | None = None,
                        dtype: torch.dtype | None = None, lakonlab_module_paths: bool = False) -> Path:
        """Writes the pipeline in the official layout (weights as ``diffusion_pytorch_model[.variant]
        .safetensors``, optionally cast to ``dtype``); the VAE is written by diffusers. Returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        ckpt.save_module(self.transformer, folder / "transformer", ckpt.ORIGINAL_ENTRIES["transformer"][1], variant,
                         dtype)
        classes: dict[str, str | None] = {"transformer": ckpt.ORIGINAL_ENTRIES["transformer"][1]}
        if self.spectrum_net is not None:
            ckpt.save_module(self.spectrum_net, folder / "spectrum_net", ckpt.ORIGINAL_ENTRIES["spectrum_net"][1],
                             variant, dtype)
            classes["spectrum_net"] = ckpt.ORIGINAL_ENTRIES["spectrum_net"][1]
        self.scheduler.save_config(folder / "scheduler")
        classes["scheduler"] = type(self.scheduler).__name__
        if self.vae is not None:
            vae = self.vae if dtype is None else self.vae.to(dtype)
            vae.save_pretrained(str(folder / "vae"), variant=variant, safe_serialization=True)
            classes["vae"] = "AutoencoderKL"
        ckpt.write_model_index(folder, classes, self.id2label, lakonlab=lakonlab_module_paths)
        return folder

    # -- devices, progress ------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "GMDiTPipeline":
        """Moves (and optionally casts) every network; returns ``self``."""
        for module in (self.transformer, self.spectrum_net, self.vae):
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    def set_progress_bar_config(self, disable: bool = False) -> None:
        """``disable=True`` hides the sampling progress bar."""
        self._progress_disable = bool(disable)

    # -- labels ---------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.transformer.config.num_embeds_ada_norm

    def get_label_ids(self, label: str | Sequence[str | int]) -> list[int]:
        """Class ids of ImageNet label names (any synonym of ``id2label``), e.g. ``['jay', 'magpie'] -> [17, 18]``.

        A plain string is one label. Integers and integer strings pass through (checked against the
        class count). Matching is exact, then case-insensitive; an unknown name raises ``ValueError``
        with the closest labels.
        """
        words = [label] if isinstance(label, (str, int)) else list(label)
        lower: dict[str, list[str]] = {}
        for name in self.labels:
            lower.setdefault(name.lower(), []).append(name)
        ids = []
        for word in words:
            if isinstance(word, int) or (isinstance(word, str) and word.strip().isdigit()):
                idx = int(word)
                if not 0 <= idx < self.num_classes:
                    raise GMFlowInputError(f"class id {idx} out of range [0, {self.num_classes})")
                ids.append(idx)
                continue
            if not isinstance(word, str):
                raise GMFlowInputError(f"labels must be strings or ints, got {type(word).__name__}")
            key = word.strip()
            if key in self.labels:
                ids.append(self.labels[key])
                continue
            folded = lower.get(key.lower(), [])
            if len({self.labels[n] for n in folded}) == 1:
                ids.append(self.labels[folded[0]])
                continue
            if not self.labels:
                raise GMFlowInputError(f"{word!r}: this checkpoint has no id2label in model_index.json; pass integer "
                                 f"class ids in [0, {self.num_classes})")
            near = difflib.get_close_matches(key, list(self.labels), n=8, cutoff=0.6)
            near += [n for n in self.labels if key.lower() in n.lower() and n not in near][: 8 - len(near)]
            hint = f" Did you mean: {', '.join(repr(n) for n in near)}?" if near else ""
            raise GMFlowInputError(f"{word!r} is not a label of this checkpoint.{hint} "
                             f"({len(self.labels)} labels in pipe.labels)")
        return ids

    def _label_tensor(self, class_labels) -> Tensor:
        if isinstance(class_labels, Tensor):
            labels = class_labels.reshape(-1).long()
        else:
            if isinstance(class_labels, (int, str)):
                class_labels = [class_labels]
            labels = torch.tensor(self.get_label_ids(list(class_labels)), dtype=torch.long)
        if labels.numel() == 0:
            raise GMFlowInputError("class_labels is empty")
        if bool((labels < 0).any()) or bool((labels >= self.num_classes).any()):
            raise GMFlowInputError(f"class labels must lie in [0, {self.num_classes}), got {labels.tolist()}")
        return labels.to(self.device)

    # -- sampling -----------------------------------------------------------------------------------------------
    def _generators(self, generator: torch.Generator | None, device: torch.device):
        """(generator of the initial noise, generator of the in-loop draws on ``device``)."""
        if generator is None:
            return None, None
        if not isinstance(generator, torch.Generator):
            raise GMFlowInputError("generator must be a torch.Generator (one for the whole batch)")
        if generator.device.type == device.type:
            return generator, generator
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        return generator, torch.Generator(device=device).manual_seed(seed)

    @torch.inference_mode()
    def __call__(
        self,
        class_labels,
        guidance_scale: float = 0.45,
        num_inference_steps: int = 32,
        num_inference_substeps: int = 4,
        output_mode: str = "mean",
        order: int = 2,
        orthogonal_guidance: float = 1.0,
        gm2_coefs: Sequence[float] = (0.005, 1.0),
        gm2_correction_steps: int = 0,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        sampler: SamplerSpec | None = None,
    ):
        """Samples one image per class label (docs/models.md#gmditpipeline, docs/sampling.md#schedulers,
        docs/sampling.md#the-sampling-loop).

        ``class_labels``: ints, label names, or a tensor. ``guidance_scale`` is the probabilistic guidance
        ``w`` in [0, 1) (0: no guidance). GM-ODE: ``output_mode='mean'`` with the Euler scheduler and
        ``num_inference_substeps`` analytic sub-steps per network call; GM-SDE: ``output_mode='sample'``,
        :class:`GMFlowSDEScheduler`, ``num_inference_substeps=1``. ``order=2`` adds the second-order GM
        solver (``gm2_coefs = (ca, cb)``). ``output_type``: ``'pil'``, ``'np'``, ``'pt'`` or ``'latent'``.
        ``sampler``: a :class:`gmflow.flow.SamplerSpec` (solver, NFE, sub-steps, guidance, ...) in place of
        the sampling keywords above; its solver picks the scheduler kind, built from this pipeline's
        scheduler config. Returns :class:`GMDiTPipelineOutput`, or ``(images,)`` with ``return_dict=False``.
        """
        if output_type not in OUTPUT_TYPES:
            raise GMFlowInputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if sampler is None:
            sampler = self._keyword_sampler(guidance_scale, num_inference_steps, num_inference_substeps, output_mode,
                                            order, orthogonal_guidance, gm2_coefs, gm2_correction_steps)
            scheduler = type(self.scheduler).from_config(self.scheduler.config)
        elif isinstance(sampler, SamplerSpec):
            scheduler = sampler.make_scheduler(self.scheduler.config)
        else:
            raise GMFlowInputError(f"sampler must be a gmflow.flow.SamplerSpec or None; got {type(sampler).__name__}")
        labels = self._label_tensor(class_labels)
        B = labels.shape[0]
        cfg = self.transformer.config
        device = self.device
        noise_gen, loop_gen = self._generators(generator, device)
        shape = (B, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if noise_gen is None:
            latents = torch.randn(shape, device=device, dtype=torch.float32)
        else:
            latents = torch.randn(shape, generator=noise_gen, device=noise_gen.device, dtype=torch.float32).to(device)

        guided = sampler.guidance > 0
        model_labels = torch.cat([labels, labels.new_full((B,), self.transformer.null_class)]) if guided else labels
        transformer = self.transformer
        net_dtype = transformer.dtype

        def model(x: Tensor, t: Tensor):
            return transformer(x.to(net_dtype), t, model_labels)

        latents = sampler.sample(model, latents, loop_gen, scheduler=scheduler, spectrum_net=self.spectrum_net,
                                 cond_first=True, progress=not self._progress_disable)

        images = self.decode_latents(latents, output_type)
        if not return_dict:
            return (images,)
        return GMDiTPipelineOutput(images, latents)

    @staticmethod
    def _keyword_sampler(guidance_scale, num_inference_steps, num_inference_substeps, output_mode, order,
                         orthogonal_guidance, gm2_coefs, gm2_correction_steps) -> SamplerSpec:
        """The :class:`SamplerSpec` of the diffusers-style keywords (``output_mode`` + ``order``)."""
        kinds = {"mean": "gm-ode", "sample": "gm-sde"}
        if output_mode not in kinds:
            raise GMFlowInputError(f"output_mode must be 'mean' or 'sample', got {output_mode!r}")
        if order not in (1, 2):
            raise GMFlowInputError(f"order must be 1 or 2, got {order!r}")
        if output_mode == "sample" and num_inference_substeps != 1:
            raise GMFlowInputError("num_inference_substeps > 1 (GM-ODE sub-steps) requires output_mode='mean'")
        if not 0 <= float(guidance_scale) < 1:
            raise GMFlowInputError(f"guidance_scale must lie in [0, 1) (probabilistic guidance), got {guidance_scale}")
        return SamplerSpec(f"{kinds[output_mode]}{order}", num_inference_steps, num_inference_substeps,
                           float(guidance_scale), orthogonal_guidance, gm2_coefs=tuple(gm2_coefs),
                           gm2_correction_steps=gm2_correction_steps)

    def decode_latents(self, latents: Tensor, output_type: str = "pil"):
        """VAE-decodes scaled latents into images in [0, 1] (``'pil'``, ``'np'``, ``'pt'``); ``'latent'``
        returns the latents; ``None`` (with a logged hint) when the pipeline has no VAE."""
        if output_type == "latent":
            return latents
        if self.vae is None:
            logger.warning("this pipeline has no VAE: returning latents only (GMDiTPipelineOutput.latents); to get "
                           "images, %s", ckpt.VAE_HINT)
            return None
        vae = self.vae
        scale = getattr(vae.config, "scaling_factor", 0.18215)
        shift = getattr(vae.config, "shift_factor", None)
        z = latents / scale
        if shift is not None:
            z = z + shift
        vae_param = next(vae.parameters())
        with torch.inference_mode():
            images = vae.decode(z.to(device=vae_param.device, dtype=vae_param.dtype)).sample
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return array
        return numpy_to_pil(array)


def numpy_to_pil(images: np.ndarray):
    """``(B, H, W, 3)`` floats in [0, 1] -> list of PIL images."""
    from PIL import Image

    images = (images * 255).round().astype("uint8")
    return [Image.fromarray(image) for image in images]
