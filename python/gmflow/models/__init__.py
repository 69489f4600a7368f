"""Networks: GM-DiT (the ImageNet model) and SpectrumMLP (spectral sampling), docs/models.md#gm-dit.

==================  ==========================================================================
``GMDiT``           DiT backbone + Gaussian-mixture head; ``GMDiT(GMDIT_IMAGENET_K8)`` is the
                    released 676,164,001-parameter model; keys match its diffusers checkpoint
``SpectrumMLP``     log power spectrum of the x0 Gaussian (37,576 parameters at base size)
==================  ==========================================================================
"""

from .gmdit import GMDIT_IMAGENET_K8, GMDiT, GMDiTConfig, sincos_pos_embed_2d, timestep_sinusoid
from .spectrum_mlp import SpectrumMLP, spectrum_stats

__all__ = [
    "GMDIT_IMAGENET_K8",
    "GMDiT",
    "GMDiTConfig",
    "SpectrumMLP",
    "sincos_pos_embed_2d",
    "spectrum_stats",
    "timestep_sinusoid",
]
