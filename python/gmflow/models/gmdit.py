"""GM-DiT: the DiT-XL/2 backbone with a Gaussian-mixture head (docs/models.md#gm-dit).

The network maps a latent ``x_t (B, C, H, W)``, the continuous time ``T = 1000 sigma`` (float, one per
sample) and class labels to a :class:`~gmflow.types.GaussianMixture` over the flow velocity ``u`` of
every pixel:

- patchify (``Conv2d`` kernel = stride = ``patch_size``) + fixed 2-D sin-cos position code;
- one conditioning embedding per forward, shared by every block and the final layer:
  ``MLP(sinusoid(T)) + class_table[y]`` (row ``num_embeds_ada_norm`` of the table is the null class);
- ``num_layers`` pre-norm adaLN-Zero blocks (self-attention through
  :func:`torch.nn.functional.scaled_dot_product_attention`, GELU-tanh MLP of ratio 4);
- final adaLN (shift, scale) and ``proj_out_2`` to ``p * p * K * (C + 1)`` outputs per token: ``K * C``
  mean channels, component-major (channel ``k * C + c``), then ``K`` logits (log-softmaxed over K);
- a separate small MLP on the **detached** embedding predicts one log-std per sample.

Parameter and module names follow the diffusers checkpoint of the released model
(``Lakonik/gmflow_imagenet_k8_ema``, docs/models.md#gm-dit-state-dict), so its safetensors load by key name. The GM head
is returned in float32 whatever the weight dtype (the last projection is upcast before the
log-softmax), as all GM algebra downstream runs in float32.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gmflow import GMFlowInputError
from gmflow.types import GaussianMixture

__all__ = [
    "GMDIT_IMAGENET_K8",
    "GMDiT",
    "GMDiTBlock",
    "GMDiTConfig",
    "sincos_pos_embed_2d",
    "timestep_sinusoid",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GMDiTConfig:
    """Constructor arguments of :class:`GMDiT`; the keys of the checkpoint's ``transformer/config.json``.

    Defaults are those of the upstream class (note ``num_gaussians=16``); the released ImageNet model is
    :data:`GMDIT_IMAGENET_K8`. ``norm_num_groups`` is unused (kept for the config round trip).
    """

    num_gaussians: int = 16
    constant_logstd: float | None = None
    logstd_inner_dim: int = 1024
    gm_num_logstd_layers: int = 2
    class_dropout_prob: float = 0.0
    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int | None = None
    num_layers: int = 28
    dropout: float = 0.0
    norm_num_groups: int = 32
    attention_bias: bool = True
    sample_size: int = 32
    patch_size: int = 2
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: int = 1000
    upcast_attention: bool = False
    norm_type: str = "ada_norm_zero"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-5

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def channels_out(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "GMDiTConfig":
        """Builds a config from a ``config.json`` dict: ``_``-prefixed keys are metadata and ignored,
        unknown keys are logged and ignored (as diffusers does)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in config if k not in names and not k.startswith("_"))
        if unknown:
            logger.warning("GMDiT config: ignoring unknown keys %s", unknown)
        kwargs = {k: v for k, v in config.items() if k in names}
        if isinstance(kwargs.get("out_channels"), float):
            kwargs["out_channels"] = int(kwargs["out_channels"])
        return cls(**kwargs)

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise GMFlowInputError(f"GMDiT config: {msg}")

        for name in ("num_gaussians", "num_attention_heads", "attention_head_dim", "in_channels", "num_layers",
                     "sample_size", "patch_size", "num_embeds_ada_norm", "logstd_inner_dim",
                     "gm_num_logstd_layers"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        need(self.out_channels is None or (isinstance(self.out_channels, int) and self.out_channels >= 1),
             f"out_channels must be None or a positive integer, got {self.out_channels!r}")
        need(self.sample_size % self.patch_size == 0,
             f"sample_size ({self.sample_size}) must be a multiple of patch_size ({self.patch_size})")
        need(self.inner_dim % 4 == 0,
             f"the width num_attention_heads * attention_head_dim = {self.inner_dim} must be a multiple of 4 "
             "(2-D sin-cos position code)")
        need(self.norm_type == "ada_norm_zero", f"only norm_type='ada_norm_zero' is supported, got {self.norm_type!r}")
        need(not self.norm_elementwise_affine, "norm_elementwise_affine must be False (the LayerNorms have no affine)")
        need(self.activation_fn in ("gelu-approximate", "gelu"),
             f"activation_fn must be 'gelu-approximate' or 'gelu', got {self.activation_fn!r}")
        need(0.0 <= self.class_dropout_prob <= 1.0, f"class_dropout_prob must be in [0, 1], got {self.class_dropout_prob}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}")


#: The released ImageNet-256 model (``Lakonik/gmflow_imagenet_k8_ema``): 676,164,001 parameters.
GMDIT_IMAGENET_K8 = GMDiTConfig(num_gaussians=8)


# -- fixed embeddings ---------------------------------------------------------------------------------

def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """``[sin(pos w), cos(pos w)]``, ``w_i = 10000^(-i / (dim / 2))``; ``pos (N,)`` -> ``(N, dim)`` (float64)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2))
    out = pos.to(torch.float64)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, base_size: int | None = None,
                        device: torch.device | str | None = None) -> Tensor:
    """Fixed 2-D sin-cos position code ``(1, grid_h * grid_w, dim)`` (float32), tokens in row-major order.

    The first ``dim / 2`` channels encode the **column**, the second half the **row** (diffusers'
    ``get_2d_sincos_pos_embed`` with ``interpolation_scale = 1``). Coordinates are ``arange(n) * base / n``
    (plain ``0 .. n-1`` on the trained grid ``n = base_size``).
    """
    if dim % 4:
        raise GMFlowInputError(f"dim must be a multiple of 4, got {dim}")
    base = grid_h if base_size is None else base_size
    rows = torch.arange(grid_h, dtype=torch.float64, device=device) / (grid_h / base)
    cols = torch.arange(grid_w, dtype=torch.float64, device=device) / (grid_w / base)
    col_code = _sincos_1d(dim // 2, cols)  # (W, dim/2)
    row_code = _sincos_1d(dim // 2, rows)  # (H, dim/2)
    grid = torch.cat(
        [col_code[None, :, :].expand(grid_h, grid_w, -1), row_code[:, None, :].expand(grid_h, grid_w, -1)], dim=-1
    )
    return grid.reshape(1, grid_h * grid_w, dim).float()


def timestep_sinusoid(timestep: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """``[cos(T f), sin(T f)]``, ``f_i = max_period^(-i / (dim / 2))`` (float32, ``downscale_freq_shift = 0``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    args = timestep.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# -- modules (named as in the diffusers checkpoint) -------------------------------------------------------

class PatchEmbed(nn.Module):
    """``proj``: Conv2d patchifier; ``pos_embed``: non-persistent sin-cos buffer (recomputed, never loaded)."""

    def __init__(self, sample_size: int, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.base_size = sample_size // patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=True)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, self.base_size, self.base_size), persistent=False)

    def reset_buffers(self) -> None:
        """Recomputes ``pos_embed`` on the device / in the dtype of the weights (e.g. after a meta load)."""
        w = self.proj.weight
        pos = sincos_pos_embed_2d(w.shape[0], self.base_size, self.base_size, device="cpu")
        self.pos_embed = pos.to(device=w.device, dtype=w.dtype)

    def forward(self, x: Tensor) -> Tensor:
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (B, gh * gw, D), row-major
        if (gh, gw) == (self.base_size, self.base_size):
            pos = self.pos_embed
        else:
            pos = sincos_pos_embed_2d(tokens.shape[-1], gh, gw, self.base_size, device=tokens.device)
        return tokens + pos.to(tokens.dtype)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, timestep: Tensor) -> Tensor:
        proj = timestep_sinusoid(timestep, self.freq_dim).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(proj)))


class ClassEmbedder(nn.Module):
    """``num_classes + 1`` rows; the last is the null (unconditional) class."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding_table(labels)


class CombinedEmbedding(nn.Module):
    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim)
        self.class_embedder = ClassEmbedder(num_classes, dim)

    def forward(self, timestep: Tensor, labels: Tensor) -> Tensor:
        return self.timestep_embedder(timestep) + self.class_embedder(labels)


class AdaLNZero(nn.Module):
    """``linear``: ``Linear(D -> 6D)`` on ``SiLU(emb)``; rows [shift, scale, gate] x [msa, mlp]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool, dropout: float, upcast: bool) -> None:
        super().__init__()
        self.heads, self.head_dim, self.upcast = heads, head_dim, upcast
        self.to_q = nn.Linear(dim, heads * head_dim, bias=bias)
        self.to_k = nn.Linear(dim, heads * head_dim, bias=bias)
        self.to_v = nn.Linear(dim, heads * head_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(heads * head_dim, dim, bias=True), nn.Dropout(dropout)])

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(B, N, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x))
        if self.upcast:
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(v.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, N, self.heads * self.head_dim)
        return self.to_out[1](self.to_out[0](out))


class GELUProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """``net.0.proj`` (D -> 4D) + GELU, ``net.1`` dropout, ``net.2`` (4D -> D)."""

    def __init__(self, dim: int, approximate: str, dropout: float, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, mult * dim, approximate), nn.Dropout(dropout), nn.Linear(mult * dim, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class GMDiTBlock(nn.Module):
    """Pre-norm adaLN-Zero block (docs/models.md#transformer-block); ``emb_act`` is ``SiLU(embedding)`` ``(B, D)``."""

    def __init__(self, config: GMDiTConfig) -> None:
        super().__init__()
        dim = config.inner_dim
        self.norm_eps = config.norm_eps
        self.norm1 = AdaLNZero(dim)
        self.attn1 = SelfAttention(dim, config.num_attention_heads, config.attention_head_dim,
                                   config.attention_bias, config.dropout, config.upcast_attention)
        approximate = "tanh" if config.activation_fn == "gelu-approximate" else "none"
        self.ff = FeedForward(dim, approximate, config.dropout)

    def forward(self, h: Tensor, emb_act: Tensor) -> Tensor:
        D = h.shape[-1]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.norm1.linear(emb_act).unsqueeze(1).chunk(6, dim=-1)
        )
        a = F.layer_norm(h, (D,), eps=1e-6) * (1 + scale_msa) + shift_msa
        h = h + gate_msa * self.attn1(a)
        m = F.layer_norm(h, (D,), eps=self.norm_eps) * (1 + scale_mlp) + shift_mlp
        return h + gate_mlp * self.ff(m)


class GMOutput(nn.Module):
    """``logstd_layers``: ``(L - 1) x [SiLU, Linear(-> inner)]`` then ``[SiLU, Linear(-> 1)]``."""

    def __init__(self, dim: int, inner_dim: int, num_layers: int, constant_logstd: float | None) -> None:
        super().__init__()
        self.constant_logstd = constant_logstd
        if constant_logstd is None:
            layers: list[nn.Module] = []
            d = dim
            for _ in range(num_layers - 1):
                layers += [nn.SiLU(), nn.Linear(d, inner_dim)]
                d = inner_dim
            layers += [nn.SiLU(), nn.Linear(d, 1)]
            self.logstd_layers = nn.Sequential(*layers)

    def logstds(self, emb: Tensor) -> Tensor:
        B = emb.shape[0]
        if self.constant_logstd is not None:
            return torch.full((B, 1, 1, 1, 1), float(self.constant_logstd), device=emb.device, dtype=torch.float32)
        return self.logstd_layers(emb.detach()).float().reshape(B, 1, 1, 1, 1)


# -- the model ----------------------------------------------------------------------------------------------

class GMDiT(nn.Module):
    """GM-DiT (docs/models.md#gm-dit). ``GMDiT(**kwargs)`` or ``GMDiT(config)``; ``GMDiT(GMDIT_IMAGENET_K8)`` is the
    released size.

    ``forward(x, timestep, class_labels) -> GaussianMixture`` over ``u`` with means ``(B, K, C, H, W)``,
    logweights ``(B, K, 1, H, W)`` and logstds ``(B, 1, 1, 1, 1)`` (all float32). ``timestep`` is the
    continuous ``T = 1000 sigma`` (a number or a ``(B,)`` tensor); ``class_labels`` are ints in
    ``[0, num_embeds_ada_norm]`` (the last is the null class, :attr:`null_class`). The input is cast to
    the weight dtype, so the same model runs in float32, bfloat16, or under autocast.
    :meth:`enable_gradient_checkpointing` checkpoints every block (non-reentrant) when grads are on.
    """

    def __init__(self, config: GMDiTConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        if isinstance(config, Mapping):
            config = GMDiTConfig.from_dict(config)
        if config is None:
            config = GMDiTConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        config.validate()
        self.config = config
        dim = config.inner_dim
        self.gradient_checkpointing = False
        self.pos_embed = PatchEmbed(config.sample_size, config.patch_size, config.in_channels, dim)
        self.emb = CombinedEmbedding(config.num_embeds_ada_norm, dim)
        self.transformer_blocks = nn.ModuleList([GMDiTBlock(config) for _ in range(config.num_layers)])
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        K, C, p = config.num_gaussians, config.channels_out, config.patch_size
        self.proj_out_2 = nn.Linear(dim, p * p * K * (C + 1))
        self.gm_out = GMOutput(dim, config.logstd_inner_dim, config.gm_num_logstd_layers, config.constant_logstd)
        self.initialize_weights()

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | GMDiTConfig) -> "GMDiT":
        return cls(config if isinstance(config, GMDiTConfig) else GMDiTConfig.from_dict(config))

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """docs/models.md#initialisation: Xavier-uniform Linear / patch-conv weights, zero biases, N(0, 0.02^2) class
        table; zero adaLN modulations, ``proj_out_1`` and the last logstd layer (initial s_u = 1). ``proj_out_2``
        keeps its Xavier init."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.pos_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.pos_embed.proj.bias)
        nn.init.normal_(self.emb.class_embedder.embedding_table.weight, std=0.02)
        for block in self.transformer_blocks:
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
        nn.init.zeros_(self.proj_out_1.weight)
        nn.init.zeros_(self.proj_out_1.bias)
        if self.config.constant_logstd is None:
            last = self.gm_out.logstd_layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def reset_buffers(self) -> None:
        """Recomputes the non-persistent buffers (the position code) next to the weights."""
        self.pos_embed.reset_buffers()

    def enable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False

    # -- properties -------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.pos_embed.proj.weight.device

    @property
    def null_class(self) -> int:
        """The label of the unconditional embedding (``num_embeds_ada_norm``)."""
        return self.config.num_embeds_ada_norm

    @property
    def num_gaussians(self) -> int:
        return self.config.num_gaussians

    # -- forward ------------------------------------------------------------------------------------------
    def _embeddings(self, timestep: Tensor, labels: Tensor, generator: torch.Generator | None) -> list[Tensor]:
        """``SiLU(embedding)`` for each block and the final layer, plus the raw final embedding last.

        With ``class_dropout_prob > 0`` in training mode every consumer independently replaces a
        sample's embedding by the null-class one with that probability (docs/models.md#conditioning-embedding)."""
        n = len(self.transformer_blocks) + 1
        emb = self.emb(timestep, labels)
        p = self.config.class_dropout_prob
        if not (self.training and p > 0):
            act = F.silu(emb)
            return [act] * n + [emb]
        t_emb = self.emb.timestep_embedder(timestep)
        emb_null = t_emb + self.emb.class_embedder(torch.full_like(labels, self.null_class))
        out = []
        for _ in range(n):
            drop = torch.rand(labels.shape[0], device=labels.device, generator=generator) < p
            out.append(torch.where(drop[:, None], emb_null, emb))
        return [F.silu(e) for e in out] + [out[-1]]

    def forward(
        self,
        hidden_states: Tensor,
        timestep: Tensor | float,
        class_labels: Tensor,
        generator: torch.Generator | None = None,
    ) -> GaussianMixture:
        """u-GM of ``hidden_states (B, C, H, W)`` at time ``timestep`` given ``class_labels (B,)``.

        ``generator`` only drives the in-model class dropout (training with ``class_dropout_prob > 0``).
        """
        cfg = self.config
        if hidden_states.dim() != 4 or hidden_states.shape[1] != cfg.in_channels:
            raise GMFlowInputError(f"hidden_states must have shape (B, {cfg.in_channels}, H, W), "
                                   f"got {tuple(hidden_states.shape)}")
        B, _, H, W = hidden_states.shape
        p = cfg.patch_size
        if H % p or W % p:
            raise GMFlowInputError(f"H and W must be multiples of patch_size={p}, got {H}x{W}")
        device = hidden_states.device
        timestep = torch.as_tensor(timestep, device=device)
        if timestep.dim() == 0:
            timestep = timestep.expand(B)
        if timestep.shape != (B,):
            raise GMFlowInputError(f"timestep must be a number or a ({B},) tensor, got shape {tuple(timestep.shape)}")
        labels = torch.as_tensor(class_labels, device=device)
        if labels.shape != (B,) or labels.is_floating_point():
            raise GMFlowInputError(f"class_labels must be a ({B},) integer tensor, "
                                   f"got {labels.dtype} {tuple(labels.shape)}")
        labels = labels.long()

        h = self.pos_embed(hidden_states.to(self.dtype))
        embs = self._embeddings(timestep, labels, generator)
        use_ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for block, emb_act in zip(self.transformer_blocks, embs):
            h = checkpoint(block, h, emb_act, use_reentrant=False) if use_ckpt else block(h, emb_act)
        shift, scale = self.proj_out_1(embs[-2]).unsqueeze(1).chunk(2, dim=-1)
        h = F.layer_norm(h, (h.shape[-1],), eps=1e-6) * (1 + scale) + shift
        out = self.proj_out_2(h).float()  # (B, N, p * p * G)

        K, C = cfg.num_gaussians, cfg.channels_out
        G = K * (C + 1)
        gh, gw = H // p, W // p
        out = out.view(B, gh, gw, p, p, G).permute(0, 5, 1, 3, 2, 4).reshape(B, G, H, W)
        means = out[:, : K * C].reshape(B, K, C, H, W)
        logweights = out[:, K * C:].reshape(B, K, 1, H, W).log_softmax(dim=1)
        logstds = self.gm_out.logstds(embs[-1])
        return GaussianMixture(means, logstds, logweights)

    def extra_repr(self) -> str:
        c = self.config
        return (f"K={c.num_gaussians}, C={c.in_channels}, sample_size={c.sample_size}, patch={c.patch_size}, "
                f"depth={c.num_layers}, width={c.inner_dim} ({c.num_attention_heads}x{c.attention_head_dim})")
