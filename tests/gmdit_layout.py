"""The checkpoint layout of the released GM-DiT (docs/models.md#gm-dit-state-dict,
docs/models.md#spectrummlp-state-dict), generated from the
layout rules of docs/models.md#gm-dit-state-dict rather than copied from a dump, plus a writer of synthetic pipeline
folders in the official layout (docs/models.md#pipeline-folder) used by the checkpoint and pipeline tests.

The folder writer builds every file by hand (JSON + safetensors), independently of
``GMDiTPipeline.save_pretrained``, so the loader is tested against the layout, not against itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# docs/models.md#pipeline-folder: the transformer/config.json of the released model (keys and values)
RELEASED_TRANSFORMER_CONFIG = {
    "num_gaussians": 8, "constant_logstd": None, "logstd_inner_dim": 1024, "gm_num_logstd_layers": 2,
    "class_dropout_prob": 0.0, "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4,
    "out_channels": None, "num_layers": 28, "dropout": 0.0, "norm_num_groups": 32, "attention_bias": True,
    "sample_size": 32, "patch_size": 2, "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000,
    "upcast_attention": False, "norm_type": "ada_norm_zero", "norm_elementwise_affine": False, "norm_eps": 1e-05,
}

# per block (docs/models.md#gm-dit-state-dict): name -> shape as a function of the width D
BLOCK_LINEARS = {
    "norm1.linear": lambda D: (6 * D, D),
    "attn1.to_q": lambda D: (D, D),
    "attn1.to_k": lambda D: (D, D),
    "attn1.to_v": lambda D: (D, D),
    "attn1.to_out.0": lambda D: (D, D),
    "ff.net.0.proj": lambda D: (4 * D, D),
    "ff.net.2": lambda D: (D, 4 * D),
}


def gmdit_keys(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every state-dict tensor of a GM-DiT of config ``cfg`` and its shape (docs/models.md#gm-dit-state-dict rules)."""
    D = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    C, p, K = cfg["in_channels"], cfg["patch_size"], cfg["num_gaussians"]
    C_out = cfg["out_channels"] or C
    inner = cfg["logstd_inner_dim"]
    keys: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out_f: int, in_f: int) -> None:
        keys[f"{name}.weight"] = (out_f, in_f)
        keys[f"{name}.bias"] = (out_f,)

    keys["pos_embed.proj.weight"] = (D, C, p, p)
    keys["pos_embed.proj.bias"] = (D,)
    linear("emb.timestep_embedder.linear_1", D, 256)
    linear("emb.timestep_embedder.linear_2", D, D)
    keys["emb.class_embedder.embedding_table.weight"] = (cfg["num_embeds_ada_norm"] + 1, D)
    for i in range(cfg["num_layers"]):
        for name, shape in BLOCK_LINEARS.items():
            linear(f"transformer_blocks.{i}.{name}", *shape(D))
    linear("proj_out_1", 2 * D, D)
    linear("proj_out_2", p * p * K * (C_out + 1), D)
    if cfg.get("constant_logstd") is None:
        L = cfg["gm_num_logstd_layers"]
        d = D
        for j in range(L - 1):
            linear(f"gm_out.logstd_layers.{2 * j + 1}", inner, d)
            d = inner
        linear(f"gm_out.logstd_layers.{2 * L - 1}", 1, d)
    return keys


def spectrum_keys(base_size=(4, 32, 32), layers=(64, 8)) -> dict[str, tuple[int, ...]]:
    """docs/models.md#spectrummlp-state-dict: ``mlp.{0,2,4}.{weight,bias}`` of ``2 -> layers... -> C H W``."""
    dims = [2, *layers, base_size[0] * base_size[1] * base_size[2]]
    keys = {}
    for j in range(len(dims) - 1):
        keys[f"mlp.{2 * j}.weight"] = (dims[j + 1], dims[j])
        keys[f"mlp.{2 * j}.bias"] = (dims[j + 1],)
    return keys


# -- synthetic pipeline folders ----------------------------------------------------------------------------

TINY_TRANSFORMER_CONFIG = dict(
    RELEASED_TRANSFORMER_CONFIG, num_gaussians=3, logstd_inner_dim=16, num_attention_heads=2, attention_head_dim=8,
    num_layers=2, sample_size=8, num_embeds_ada_norm=10,
)
TINY_SPECTRUM_CONFIG = {"base_size": [4, 8, 8], "layers": [8, 4]}
TINY_ID2LABEL = {
    "0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus", "2": "jay", "3": "magpie",
    "4": "great white shark, white shark", "5": "cock", "6": "hen", "7": "ostrich, Struthio camelus",
    "8": "brambling, Fringilla montifringilla", "9": "goldfinch, Carduelis carduelis",
}
ORIGINAL_INDEX = {
    "transformer": ["lib.models.architecture.gmflow", "_GMDiTTransformer2DModel"],
    "spectrum_net": ["lib.models.architecture.gmflow", "_SpectrumMLP"],
    "scheduler": ["lib.models.diffusions.schedulers.flow_euler_ode", "FlowEulerODEScheduler"],
    "vae": ["diffusers", "AutoencoderKL"],
}
LAKONLAB_MODULES = {
    "transformer": "lakonlab.models.architectures.gmflow.gmdit",
    "spectrum_net": "lakonlab.models.architectures.gmflow.spectrum_mlp",
    "scheduler": "lakonlab.models.diffusions.schedulers.flow_euler_ode",
}
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], layers_per_block=1, latent_channels=4,
    norm_num_groups=4, sample_size=16,
)


def random_state(keys: dict[str, tuple[int, ...]], seed: int, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (0.2 * torch.randn(shape, generator=g)).to(dtype) for k, shape in keys.items()}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_official_folder(root: Path, variant: str | None = "bf16", lakonlab: bool = False, vae: bool = False,
                          seed: int = 0) -> Path:
    """A tiny pipeline folder exactly in the layout of ``Lakonik/gmflow_imagenet_k8_ema`` (random weights)."""
    from safetensors.torch import save_file

    suffix = f".{variant}" if variant else ""
    dtype = torch.bfloat16 if variant == "bf16" else torch.float32
    index = {"_class_name": "GMDiTPipeline", "_diffusers_version": "0.32.2", "id2label": TINY_ID2LABEL}
    for name, (module, cls_name) in ORIGINAL_INDEX.items():
        if lakonlab and name in LAKONLAB_MODULES:
            module = LAKONLAB_MODULES[name]
        index[name] = [module, cls_name]
    if not vae:
        index["vae"] = [None, None]
    _write_json(root / "model_index.json", index)
    meta = {"_diffusers_version": "0.32.2"}
    _write_json(root / "transformer" / "config.json",
                {"_class_name": "_GMDiTTransformer2DModel", **meta, **TINY_TRANSFORMER_CONFIG})
    save_file(random_state(gmdit_keys(TINY_TRANSFORMER_CONFIG), seed, dtype),
              str(root / "transformer" / f"diffusion_pytorch_model{suffix}.safetensors"), metadata={"format": "pt"})
    _write_json(root / "spectrum_net" / "config.json", {"_class_name": "_SpectrumMLP", **meta, **TINY_SPECTRUM_CONFIG})
    save_file(random_state(spectrum_keys(TINY_SPECTRUM_CONFIG["base_size"], TINY_SPECTRUM_CONFIG["layers"]), seed + 1,
                           dtype),
              str(root / "spectrum_net" / f"diffusion_pytorch_model{suffix}.safetensors"), metadata={"format": "pt"})
    _write_json(root / "scheduler" / "scheduler_config.json",
                {"_class_name": "FlowEulerODEScheduler", **meta, "num_train_timesteps": 1000, "shift": 1.0})
    if vae:
        from diffusers import AutoencoderKL

        torch.manual_seed(seed + 2)
        model = AutoencoderKL(**TINY_VAE_CONFIG).to(dtype)
        model.save_pretrained(str(root / "vae"), variant=variant, safe_serialization=True)
    return root
