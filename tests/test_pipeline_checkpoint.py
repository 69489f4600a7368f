"""Pipeline folders in the official layout (docs/models.md#pipeline-folder): a tiny synthetic
folder written by hand loads; original and LakonLab-patched module paths; variants; a bit-identical
save -> load round trip; clear errors for broken folders."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from gmdit_layout import TINY_ID2LABEL, TINY_TRANSFORMER_CONFIG, gmdit_keys, random_state, write_official_folder
from gmflow.flow import FlowEulerODEScheduler, GMFlowSDEScheduler
from gmflow.models import GMDiT, SpectrumMLP
from gmflow.pipelines import CheckpointError, GMDiTPipeline, MissingCheckpointFileError, read_model_index
from gmflow.pipelines import checkpoint as ckpt

WEIGHTS = "diffusion_pytorch_model.bf16.safetensors"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return write_official_folder(tmp_path_factory.mktemp("official") / "gmflow_imagenet_k8_ema")


@pytest.fixture
def broken(official, tmp_path):
    """A writable copy of the official folder to break."""
    return shutil.copytree(official, tmp_path / "copy")


def _assert_module_equals_file(module, path, dtype=torch.float32):
    tensors = load_file(str(path))
    state = module.state_dict()
    assert set(state) == set(tensors)
    for k, v in tensors.items():
        assert state[k].dtype == dtype
        assert torch.equal(state[k], v.to(dtype)), k


def test_loads_the_official_layout(official):
    pipe = GMDiTPipeline.from_pretrained(official)  # variant=None: the only (bf16) variant present
    assert isinstance(pipe.transformer, GMDiT) and isinstance(pipe.spectrum_net, SpectrumMLP)
    assert type(pipe.scheduler) is FlowEulerODEScheduler and pipe.scheduler.config["shift"] == 1.0
    assert pipe.vae is None  # [null, null] in this folder
    assert pipe.transformer.config.num_gaussians == 3 and not pipe.transformer.training
    _assert_module_equals_file(pipe.transformer, official / "transformer" / WEIGHTS)
    _assert_module_equals_file(pipe.spectrum_net, official / "spectrum_net" / WEIGHTS)
    pos = pipe.transformer.pos_embed.pos_embed
    assert not pos.is_meta and torch.equal(pos, GMDiT(**TINY_TRANSFORMER_CONFIG).pos_embed.pos_embed)
    assert pipe.id2label[2] == "jay" and pipe.labels["Carassius auratus"] == 1
    assert list(pipe.labels) == sorted(pipe.labels)
    bf16 = GMDiTPipeline.from_pretrained(official, variant="bf16", torch_dtype=torch.bfloat16)
    _assert_module_equals_file(bf16.transformer, official / "transformer" / WEIGHTS, torch.bfloat16)
    assert bf16.transformer.pos_embed.pos_embed.dtype == torch.bfloat16


def test_lakonlab_patched_index_and_scheduler_classes(tmp_path, official):
    patched = write_official_folder(tmp_path / "patched", lakonlab=True)
    index = json.loads((patched / "model_index.json").read_text())
    assert index["transformer"][0] == "lakonlab.models.architectures.gmflow.gmdit"
    a = GMDiTPipeline.from_pretrained(official)
    b = GMDiTPipeline.from_pretrained(patched)
    for k, v in a.transformer.state_dict().items():
        assert torch.equal(v, b.transformer.state_dict()[k])
    index["scheduler"] = ["lakonlab.models.diffusions.schedulers.flow_sde", "FlowSDEScheduler"]
    (patched / "model_index.json").write_text(json.dumps(index))
    assert type(GMDiTPipeline.from_pretrained(patched).scheduler) is GMFlowSDEScheduler
    # the non-underscore class names of the wrappers are accepted too
    index["transformer"][1], index["spectrum_net"][1] = "GMDiTTransformer2DModel", "SpectrumMLP"
    (patched / "model_index.json").write_text(json.dumps(index))
    assert read_model_index(patched).classes["transformer"] == "GMDiTTransformer2DModel"


def test_variant_selection(broken):
    d = broken / "transformer"
    fp32 = random_state(gmdit_keys(TINY_TRANSFORMER_CONFIG), seed=5, dtype=torch.float32)
    save_file(fp32, str(d / "diffusion_pytorch_model.safetensors"))
    assert ckpt.resolve_weights(d) == (d / "diffusion_pytorch_model.safetensors", None)
    assert ckpt.resolve_weights(d, "bf16") == (d / WEIGHTS, "bf16")
    plain = ckpt.load_module(GMDiT, d)
    assert torch.equal(plain.proj_out_2.weight, fp32["proj_out_2.weight"])
    with pytest.raises(MissingCheckpointFileError, match=r"variant 'fp16'.*diffusion_pytorch_model.bf16.safetensors"):
        ckpt.load_module(GMDiT, d, variant="fp16")
    (d / "diffusion_pytorch_model.safetensors").rename(d / "diffusion_pytorch_model.fp16.safetensors")
    with pytest.raises(CheckpointError, match="several weight variants"):
        ckpt.resolve_weights(d)


def test_round_trip_is_bit_identical(official, tmp_path):
    pipe = GMDiTPipeline.from_pretrained(official, variant="bf16", torch_dtype=torch.bfloat16)
    out = pipe.save_pretrained(tmp_path / "saved", variant="bf16")
    for component in ("transformer", "spectrum_net"):
        a, b = load_file(str(official / component / WEIGHTS)), load_file(str(out / component / WEIGHTS))
        assert a.keys() == b.keys()
        assert all(a[k].dtype == b[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)
        cfg_a = json.loads((official / component / "config.json").read_text())
        cfg_b = json.loads((out / component / "config.json").read_text())
        assert {k: v for k, v in cfg_a.items() if not k.startswith("_")} == \
               {k: v for k, v in cfg_b.items() if not k.startswith("_")}
        assert cfg_b["_class_name"] == cfg_a["_class_name"]
    index = json.loads((out / "model_index.json").read_text())
    assert index["transformer"] == ["lib.models.architecture.gmflow", "_GMDiTTransformer2DModel"]
    assert index["spectrum_net"] == ["lib.models.architecture.gmflow", "_SpectrumMLP"]
    assert index["scheduler"] == ["lib.models.diffusions.schedulers.flow_euler_ode", "FlowEulerODEScheduler"]
    assert index["id2label"] == TINY_ID2LABEL and index["_class_name"] == "GMDiTPipeline"
    # fp32 save -> load, and the scheduler / labels survive
    fp32 = GMDiTPipeline.from_pretrained(official)
    fp32.scheduler = GMFlowSDEScheduler.from_config(fp32.scheduler.config)
    again = GMDiTPipeline.from_pretrained(fp32.save_pretrained(tmp_path / "fp32", lakonlab_module_paths=True))
    for mod_a, mod_b in [(fp32.transformer, again.transformer), (fp32.spectrum_net, again.spectrum_net)]:
        sa, sb = mod_a.state_dict(), mod_b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) and sb[k].dtype == torch.float32 for k in sa)
    assert type(again.scheduler) is GMFlowSDEScheduler and again.id2label == fp32.id2label
    assert (tmp_path / "fp32" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_missing_files_are_named(broken, tmp_path):
    with pytest.raises(MissingCheckpointFileError, match="pipeline folder not found"):
        GMDiTPipeline.from_pretrained(tmp_path / "nope")
    (broken / "transformer" / "config.json").unlink()
    with pytest.raises(MissingCheckpointFileError, match=r"transformer/config.json is missing"):
        GMDiTPipeline.from_pretrained(broken)
    (broken / "transformer" / WEIGHTS).rename(broken / "transformer" / "diffusion_pytorch_model.bin")
    with pytest.raises(MissingCheckpointFileError, match=r"no diffusion_pytorch_model.*only \.safetensors"):
        ckpt.resolve_weights(broken / "transformer")
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(MissingCheckpointFileError, match="scheduler_config.json"):
        ckpt.load_scheduler(broken / "scheduler")
    (broken / "model_index.json").unlink()
    with pytest.raises(MissingCheckpointFileError, match=r"model_index.json is missing.*not a GMFlow pipeline folder"):
        GMDiTPipeline.from_pretrained(broken)


def test_key_and_shape_mismatches_are_named(broken):
    path = broken / "transformer" / WEIGHTS
    good = load_file(str(path))
    bad = dict(good)
    bad.pop("transformer_blocks.1.attn1.to_k.bias")
    bad["transformer_blocks.0.norm1.emb.linear.weight"] = torch.zeros(2)
    save_file(bad, str(path))
    with pytest.raises(CheckpointError) as err:
        GMDiTPipeline.from_pretrained(broken)
    msg = str(err.value)
    assert str(path) in msg and "transformer_blocks.1.attn1.to_k.bias" in msg and "1 missing key" in msg
    assert "1 unexpected key(s): transformer_blocks.0.norm1.emb.linear.weight" in msg
    # a config that does not fit the weights: shape mismatches name key, file shape and model shape
    save_file(good, str(path))
    _edit_json(broken / "transformer" / "config.json", lambda c: c.update(num_gaussians=4))
    with pytest.raises(CheckpointError, match=r"proj_out_2.weight: file \(60, 16\) vs model \(80, 16\)"):
        GMDiTPipeline.from_pretrained(broken)
    _edit_json(broken / "transformer" / "config.json", lambda c: c.update(num_gaussians=3, norm_type="layer_norm"))
    with pytest.raises(CheckpointError, match="invalid GMDiT config.*norm_type"):
        GMDiTPipeline.from_pretrained(broken)
    path.write_bytes(b"not a safetensors file")
    _edit_json(broken / "transformer" / "config.json", lambda c: c.update(norm_type="ada_norm_zero"))
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        GMDiTPipeline.from_pretrained(broken)


def test_bad_model_index(broken):
    index = broken / "model_index.json"
    _edit_json(index, lambda d: d.update(scheduler=["x", "DPMSolverMultistepScheduler"]))
    with pytest.raises(CheckpointError, match="scheduler class 'DPMSolverMultistepScheduler' is not supported"):
        GMDiTPipeline.from_pretrained(broken)
    _edit_json(index, lambda d: d.update(scheduler=["x", "FlowEulerODEScheduler"], transformer="oops"))
    with pytest.raises(CheckpointError, match=r"entry 'transformer' must be \[module path, class name\]"):
        GMDiTPipeline.from_pretrained(broken)
    _edit_json(index, lambda d: d.update(transformer=[None, None]))
    with pytest.raises(CheckpointError, match="no 'transformer' entry"):
        GMDiTPipeline.from_pretrained(broken)
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        GMDiTPipeline.from_pretrained(broken)


def test_without_spectrum_net_and_without_id2label(broken):
    def drop(d):
        d["spectrum_net"] = [None, None]
        del d["id2label"]

    _edit_json(broken / "model_index.json", drop)
    pipe = GMDiTPipeline.from_pretrained(broken)
    assert pipe.spectrum_net is None and pipe.labels == {}
    assert pipe.get_label_ids(["3", 4]) == [3, 4]
    with pytest.raises(ValueError, match="no id2label"):
        pipe.get_label_ids(["jay"])


def test_vae_without_diffusers_logs_how_to_get_images(tmp_path, monkeypatch, caplog):
    folder = write_official_folder(tmp_path / "f")
    _edit_json(folder / "model_index.json", lambda d: d.update(vae=["diffusers", "AutoencoderKL"]))
    (folder / "vae").mkdir()
    (folder / "vae" / "config.json").write_text("{}")
    save_file({"x": torch.zeros(1)}, str(folder / "vae" / WEIGHTS))
    monkeypatch.setattr(ckpt, "diffusers_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="gmflow"):
        pipe = GMDiTPipeline.from_pretrained(folder)
    assert pipe.vae is None and "gmflow[diffusers]" in caplog.text
