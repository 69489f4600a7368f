"""GM-DiT (docs/models.md#gm-dit): full-size parameter count and checkpoint keys on the meta device,
the forward against an independent functional re-statement of docs/models.md, init rules, dtypes,
gradient checkpointing, class dropout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gmdit_layout import RELEASED_TRANSFORMER_CONFIG, TINY_TRANSFORMER_CONFIG, gmdit_keys
from gmflow.models import GMDIT_IMAGENET_K8, GMDiT, GMDiTConfig, sincos_pos_embed_2d, timestep_sinusoid


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def full_meta():
    with torch.device("meta"):
        return GMDiT(GMDIT_IMAGENET_K8)


def tiny(**overrides) -> GMDiT:
    cfg = {k: v for k, v in TINY_TRANSFORMER_CONFIG.items()}
    cfg.update(overrides)
    return GMDiT(**cfg)


def test_full_size_parameter_count(full_meta):
    params = dict(full_meta.named_parameters())
    assert all(p.is_meta for p in params.values())
    assert sum(p.numel() for p in params.values()) == 676_164_001
    # the per-part counts of docs/models.md#parameter-count
    def count(prefix):
        return sum(p.numel() for k, p in params.items() if k.startswith(prefix))

    assert count("pos_embed.proj.") == 19_584
    assert count("emb.timestep_embedder.") == 1_624_320
    assert count("emb.class_embedder.") == 1_153_152
    assert count("transformer_blocks.0.") == 23_905_152
    assert count("transformer_blocks.0.norm1.") == 7_969_536
    assert count("transformer_blocks.0.attn1.") == 5_313_024
    assert count("transformer_blocks.0.ff.") == 10_622_592
    assert count("transformer_blocks.") == 669_344_256
    assert count("proj_out_1.") == 2_656_512
    assert count("proj_out_2.") == 184_480
    assert count("gm_out.") == 1_181_697


def test_full_size_state_dict_matches_the_released_checkpoint(full_meta):
    state = full_meta.state_dict()
    expected = gmdit_keys(RELEASED_TRANSFORMER_CONFIG)
    assert len(expected) == 2 + 4 + 1 + 28 * 14 + 2 + 2 + 4 == 407
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert list(state) == list(expected)  # same order as the rules list them
    # a few literal rows of the docs/models.md#gm-dit-state-dict table
    assert expected["transformer_blocks.27.norm1.linear.weight"] == (6912, 1152)
    assert expected["emb.class_embedder.embedding_table.weight"] == (1001, 1152)
    assert expected["proj_out_2.weight"] == (160, 1152)
    assert expected["gm_out.logstd_layers.3.weight"] == (1, 1024)
    assert "pos_embed.pos_embed" not in state  # non-persistent buffer
    assert full_meta.pos_embed.pos_embed.shape == (1, 256, 1152)


def test_config_round_trip_and_validation():
    assert GMDiTConfig.from_dict({**RELEASED_TRANSFORMER_CONFIG, "_class_name": "x"}) == GMDIT_IMAGENET_K8
    assert GMDIT_IMAGENET_K8.to_dict() == RELEASED_TRANSFORMER_CONFIG
    assert GMDiTConfig().num_gaussians == 16  # the upstream class default
    assert tiny().config == GMDiT(TINY_TRANSFORMER_CONFIG).config == GMDiT.from_config(TINY_TRANSFORMER_CONFIG).config
    for bad, match in [(dict(norm_type="layer_norm"), "norm_type"), (dict(patch_size=3), "multiple of patch_size"),
                       (dict(norm_elementwise_affine=True), "affine"), (dict(activation_fn="relu"), "activation_fn"),
                       (dict(num_layers=0), "num_layers")]:
        with pytest.raises(ValueError, match=match):
            tiny(**bad)


# -- an independent statement of the forward (docs/models.md), on the state dict ------------------------------

def _reference_forward(sd, cfg, x, T, y):
    D = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    nh, hd = cfg["num_attention_heads"], cfg["attention_head_dim"]
    p, K, C = cfg["patch_size"], cfg["num_gaussians"], cfg["in_channels"]
    B, _, H, W = x.shape
    gh, gw = H // p, W // p
    # patches, row-major tokens, each patch flattened (c, py, px) like the conv weight
    patches = x.reshape(B, C, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * p * p)
    h = patches @ sd["pos_embed.proj.weight"].reshape(D, -1).T + sd["pos_embed.proj.bias"]
    # position code: first half column, second half row; omega_i = 10000^(-i / (D/4))
    n = D // 4
    omega = 10000.0 ** (-torch.arange(n, dtype=torch.float64) / n)
    pos = torch.zeros(gh * gw, D, dtype=torch.float64)
    for r in range(gh):
        for c in range(gw):
            pos[r * gw + c] = torch.cat([torch.sin(c * omega), torch.cos(c * omega), torch.sin(r * omega),
                                         torch.cos(r * omega)])
    h = h + pos.float()
    f = torch.exp(-math.log(10000.0) * torch.arange(128) / 128)
    proj = torch.cat([torch.cos(T[:, None] * f), torch.sin(T[:, None] * f)], dim=1)

    def lin(name, v):
        return v @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    emb = lin("emb.timestep_embedder.linear_2", F.silu(lin("emb.timestep_embedder.linear_1", proj)))
    emb = emb + sd["emb.class_embedder.embedding_table.weight"][y]

    def ln(v, eps):
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + eps)

    for i in range(cfg["num_layers"]):
        b = f"transformer_blocks.{i}"
        mod = lin(f"{b}.norm1.linear", F.silu(emb))[:, None]
        sh1, sc1, g1, sh2, sc2, g2 = [mod[..., j * D:(j + 1) * D] for j in range(6)]
        a = ln(h, 1e-6) * (1 + sc1) + sh1
        q, k, v = (lin(f"{b}.attn1.to_{n_}", a).reshape(B, -1, nh, hd) for n_ in "qkv")
        att = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        o = torch.einsum("bhqk,bkhd->bqhd", att.softmax(-1), v).reshape(B, -1, D)
        h = h + g1 * lin(f"{b}.attn1.to_out.0", o)
        m = ln(h, cfg["norm_eps"]) * (1 + sc2) + sh2
        h = h + g2 * lin(f"{b}.ff.net.2", F.gelu(lin(f"{b}.ff.net.0.proj", m), approximate="tanh"))
    mod = lin("proj_out_1", F.silu(emb))[:, None]
    shift, scale = mod[..., :D], mod[..., D:]
    h = ln(h, 1e-6) * (1 + scale) + shift
    out = lin("proj_out_2", h)  # (B, N, p p G), index (py * p + px) * G + g
    G = K * (C + 1)
    full = torch.zeros(B, G, H, W)
    for r in range(gh):
        for c in range(gw):
            for py in range(p):
                for px in range(p):
                    full[:, :, p * r + py, p * c + px] = out[:, r * gw + c, (py * p + px) * G:(py * p + px + 1) * G]
    means = full[:, :K * C].reshape(B, K, C, H, W)  # channel k * C + c
    logweights = full[:, K * C:].reshape(B, K, 1, H, W).log_softmax(1)
    hidden = lin("gm_out.logstd_layers.1", F.silu(emb))
    logstds = lin("gm_out.logstd_layers.3", F.silu(hidden)).reshape(B, 1, 1, 1, 1)
    return means, logstds, logweights


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def test_forward_matches_the_spec_statement():
    model = _randomize(tiny(num_layers=2)).eval()
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    T = torch.tensor([1000.0, 512.5, 3.0])
    y = torch.tensor([0, 7, 10])  # 10 = null class
    gm = model(x, T, y)
    ref = _reference_forward(model.state_dict(), TINY_TRANSFORMER_CONFIG, x, T, y)
    assert [tuple(v.shape) for v in gm] == [(3, 3, 4, 8, 8), (3, 1, 1, 1, 1), (3, 3, 1, 8, 8)]
    assert all(v.dtype == torch.float32 for v in gm)
    for got, want in zip(gm, ref):
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(gm.logweights.exp().sum(1), torch.ones(3, 1, 8, 8))
    # a scalar timestep broadcasts
    torch.testing.assert_close(model(x, 512.5, y).means[1], gm.means[1])


def test_position_code_and_timestep_sinusoid():
    pos = sincos_pos_embed_2d(16, 4, 4)[0]  # (16 tokens, 16 channels)
    assert pos.shape == (16, 16)
    # first half depends on the column only, second half on the row only
    assert torch.equal(pos[0 * 4 + 2, :8], pos[3 * 4 + 2, :8])
    assert torch.equal(pos[1 * 4 + 0, 8:], pos[1 * 4 + 3, 8:])
    r, c, w1 = 1, 2, 10000 ** (-1 / 4)  # token r * 4 + c; omega_1 of a 4-frequency code
    torch.testing.assert_close(pos[r * 4 + c, 1], torch.tensor(math.sin(c * w1)))
    torch.testing.assert_close(pos[r * 4 + c, 8 + 4 + 1], torch.tensor(math.cos(r * w1)))
    assert sincos_pos_embed_2d(16, 3, 5).shape == (1, 15, 16)
    s = timestep_sinusoid(torch.tensor([0.0, 250.0]))
    assert s.shape == (2, 256)
    assert torch.equal(s[0, :128], torch.ones(128)) and torch.equal(s[0, 128:], torch.zeros(128))
    torch.testing.assert_close(s[1, 1], torch.tensor(math.cos(250.0 * math.exp(-math.log(10000.0) / 128))))


def test_initialization_rules():
    model = tiny(num_layers=2, num_attention_heads=4, attention_head_dim=16)
    zero = ["transformer_blocks.0.norm1.linear.weight", "transformer_blocks.1.norm1.linear.bias", "proj_out_1.weight",
            "proj_out_1.bias", "gm_out.logstd_layers.3.weight", "gm_out.logstd_layers.3.bias", "proj_out_2.bias",
            "pos_embed.proj.bias", "transformer_blocks.0.attn1.to_q.bias"]
    sd = model.state_dict()
    for k in zero:
        assert torch.count_nonzero(sd[k]) == 0, k
    w = sd["proj_out_2.weight"]  # Xavier-uniform, not zeroed
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound
    conv = sd["pos_embed.proj.weight"]
    assert conv.abs().max() <= math.sqrt(6 / (conv.shape[0] + conv[0].numel()))
    assert 0.01 < sd["emb.class_embedder.embedding_table.weight"].std() < 0.03
    gm = model(torch.randn(2, 4, 8, 8), torch.tensor([900.0, 10.0]), torch.tensor([1, 2]))
    assert torch.equal(gm.logstds, torch.zeros(2, 1, 1, 1, 1))  # initial s_u = 1


def test_bf16_forward_and_non_base_resolution():
    model = _randomize(tiny()).eval()
    x = torch.randn(2, 4, 8, 8)
    T, y = torch.tensor([700.0, 30.0]), torch.tensor([3, 4])
    ref = model(x, T, y)
    low = model.to(torch.bfloat16)
    assert low.pos_embed.pos_embed.dtype == torch.bfloat16
    gm = low(x, T, y)
    assert all(v.dtype == torch.float32 for v in gm) and all(torch.isfinite(v).all() for v in gm)
    assert (gm.means - ref.means).abs().max() < 0.1 * ref.means.abs().max()
    big = model.float()(torch.randn(1, 4, 12, 16), 500.0, torch.tensor([1]))
    assert big.means.shape == (1, 3, 4, 12, 16)
    with pytest.raises(ValueError, match="multiples of patch_size"):
        model(torch.randn(1, 4, 7, 8), 500.0, torch.tensor([1]))
    with pytest.raises(ValueError, match="class_labels"):
        model(x, T, torch.tensor([1.0, 2.0]))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = _randomize(tiny()).train()
    x, T, y = torch.randn(2, 4, 8, 8), torch.tensor([700.0, 30.0]), torch.tensor([3, 4])

    def grads():
        model.zero_grad(set_to_none=True)
        gm = model(x, T, y)
        (gm.means.square().mean() + gm.logweights.exp().square().mean() + gm.logstds.sum()).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    plain = grads()
    model.enable_gradient_checkpointing()
    ckpt = grads()
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6)
    # the logstd head sees a detached embedding: its loss does not reach the embeddings
    model.zero_grad(set_to_none=True)
    model(x, T, y).logstds.sum().backward()
    assert model.emb.timestep_embedder.linear_1.weight.grad is None
    assert model.gm_out.logstd_layers[1].weight.grad is not None


def test_class_dropout_uses_the_null_class_in_training_only():
    model = _randomize(tiny(class_dropout_prob=1.0))
    x, T = torch.randn(2, 4, 8, 8), torch.tensor([600.0, 600.0])
    null = torch.full((2,), 10)
    model.train()
    dropped = model(x, T, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0))
    model.eval()
    uncond = model(x, T, null)
    cond = model(x, T, torch.tensor([1, 2]))
    torch.testing.assert_close(dropped.means, uncond.means)
    assert not torch.allclose(cond.means, uncond.means)
