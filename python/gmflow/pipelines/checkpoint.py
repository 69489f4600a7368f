"""Pipeline folders in the layout of the official ``Lakonik/gmflow_imagenet_k8_ema`` (docs/models.md#pipeline-folder).

::

    model_index.json                    _class_name, id2label, [module path, class name] per component
    transformer/config.json             GMDiT arguments (GMDiTConfig)
    transformer/diffusion_pytorch_model[.<variant>].safetensors
    spectrum_net/config.json            {"base_size": [4, 32, 32], "layers": [64, 8]}
    spectrum_net/diffusion_pytorch_model[.<variant>].safetensors
    scheduler/scheduler_config.json     FlowEulerODEScheduler (or GMFlowSDEScheduler / FlowSDEScheduler)
    vae/config.json + vae/diffusion_pytorch_model[.<variant>].safetensors   (diffusers AutoencoderKL)

Module paths in ``model_index.json`` are ignored (the original ``lib.models...`` ones and the
LakonLab-patched ``lakonlab.models...`` ones both work): components are mapped by name, and their
class names are checked against the known ones. Nothing is downloaded: point at a local folder
(e.g. a ``huggingface_hub.snapshot_download`` of the official repo).

Weights are read with ``safetensors``; the loader checks every key and shape against the model the
config describes and names the file and keys of any mismatch. The model is built on the meta device
and the loaded tensors are assigned, so a full-size model is never randomly initialised first.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from gmflow import GMFlowInputError
from gmflow.flow.schedulers import FlowEulerODEScheduler, GMFlowSDEScheduler
from gmflow.models import GMDiT, SpectrumMLP

__all__ = [
    "CheckpointError",
    "MissingCheckpointFileError",
    "ModelIndex",
    "COMPONENTS",
    "load_module",
    "load_scheduler",
    "load_vae",
    "read_model_index",
    "resolve_weights",
    "save_module",
    "write_model_index",
]

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
WEIGHTS_NAME = "diffusion_pytorch_model"
PIPELINE_CLASS = "GMDiTPipeline"
DIFFUSERS_VERSION = "0.32.2"  # written as ``_diffusers_version`` when diffusers is not installed

# component -> (module path written by the original package, class name it writes)
ORIGINAL_ENTRIES: dict[str, tuple[str, str]] = {
    "transformer": ("lib.models.architecture.gmflow", "_GMDiTTransformer2DModel"),
    "spectrum_net": ("lib.models.architecture.gmflow", "_SpectrumMLP"),
    "scheduler": ("lib.models.diffusions.schedulers.flow_euler_ode", "FlowEulerODEScheduler"),
    "vae": ("diffusers", "AutoencoderKL"),
}
# module paths of the LakonLab-patched model_index.json (class names unchanged)
LAKONLAB_MODULES: dict[str, str] = {
    "transformer": "lakonlab.models.architectures.gmflow.gmdit",
    "spectrum_net": "lakonlab.models.architectures.gmflow.spectrum_mlp",
    "scheduler": "lakonlab.models.diffusions.schedulers.flow_euler_ode",
}

KNOWN_CLASSES: dict[str, frozenset[str]] = {
    "transformer": frozenset({"_GMDiTTransformer2DModel", "GMDiTTransformer2DModel", "GMDiT"}),
    "spectrum_net": frozenset({"_SpectrumMLP", "SpectrumMLP"}),
    "vae": frozenset({"AutoencoderKL"}),
}
SCHEDULER_CLASSES = {
    "FlowEulerODEScheduler": FlowEulerODEScheduler,
    "GMFlowSDEScheduler": GMFlowSDEScheduler,
    "FlowSDEScheduler": GMFlowSDEScheduler,  # LakonLab's name; h = 1 'canonical' is GM-SDE
}
COMPONENTS = ("transformer", "spectrum_net", "scheduler", "vae")
# buffers that may appear in a file but are always recomputed
IGNORED_KEYS = frozenset({"pos_embed.pos_embed"})


class CheckpointError(GMFlowInputError):
    """A pipeline folder or weight file that does not match what the loader expects."""


class MissingCheckpointFileError(CheckpointError, FileNotFoundError):
    """A file or folder of the pipeline layout is missing."""


class ModelIndex(NamedTuple):
    """The parsed ``model_index.json``: class name per component (``None`` when absent) and ``id2label``."""

    classes: dict[str, str | None]
    id2label: dict[int, str]
    raw: dict[str, Any]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise MissingCheckpointFileError(f"{what} is missing: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_model_index(folder: str | os.PathLike) -> ModelIndex:
    """Reads and checks ``folder/model_index.json`` (original or LakonLab-patched module paths)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingCheckpointFileError(f"pipeline folder not found: {folder}")
    path = folder / MODEL_INDEX
    if not path.is_file():
        raise MissingCheckpointFileError(
            f"{path} is missing: {folder} is not a GMFlow pipeline folder (expected the layout of "
            "Lakonik/gmflow_imagenet_k8_ema: model_index.json, transformer/, spectrum_net/, scheduler/, vae/)"
        )
    raw = _read_json(path, MODEL_INDEX)
    if raw.get("_class_name", PIPELINE_CLASS) != PIPELINE_CLASS:
        logger.warning("%s: _class_name is %r, expected %r; loading it as a GM-DiT pipeline anyway",
                       path, raw.get("_class_name"), PIPELINE_CLASS)
    classes: dict[str, str | None] = {}
    for name in COMPONENTS:
        entry = raw.get(name)
        if entry is None or (isinstance(entry, (list, tuple)) and all(e is None for e in entry)):
            classes[name] = None
            continue
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str)):
            raise CheckpointError(f"{path}: entry {name!r} must be [module path, class name], got {entry!r}")
        cls_name = entry[1]
        if name == "scheduler":
            if cls_name not in SCHEDULER_CLASSES:
                raise CheckpointError(f"{path}: scheduler class {cls_name!r} is not supported "
                                      f"(known: {', '.join(sorted(SCHEDULER_CLASSES))})")
        elif cls_name not in KNOWN_CLASSES[name]:
            raise CheckpointError(f"{path}: {name} class {cls_name!r} is not supported "
                                  f"(known: {', '.join(sorted(KNOWN_CLASSES[name]))})")
        classes[name] = cls_name
    if classes["transformer"] is None:
        raise CheckpointError(f"{path}: no 'transformer' entry; a GM-DiT pipeline needs one")
    id2label: dict[int, str] = {}
    for key, value in (raw.get("id2label") or {}).items():
        try:
            id2label[int(key)] = str(value)
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: id2label keys must be integers, got {key!r}") from None
    return ModelIndex(classes, id2label, raw)


def write_model_index(folder: str | os.PathLike, components: Mapping[str, str | None],
                      id2label: Mapping[int, str] | None = None, lakonlab: bool = False) -> Path:
    """Writes ``model_index.json`` as the upstream pipeline does (original module paths, underscore
    class names; ``lakonlab=True`` writes the LakonLab-patched module paths). ``components`` maps a
    component name to its class name, or ``None`` for an absent one. ``id2label`` goes in the index."""
    try:
        import diffusers

        version = diffusers.__version__
    except ImportError:
        version = DIFFUSERS_VERSION
    index: dict[str, Any] = {"_class_name": PIPELINE_CLASS, "_diffusers_version": version}
    if id2label:
        index["id2label"] = {str(k): v for k, v in sorted(id2label.items())}
    for name in COMPONENTS:
        cls_name = components.get(name)
        if cls_name is None:
            index[name] = [None, None]
            continue
        module = ORIGINAL_ENTRIES[name][0]
        if lakonlab and name in LAKONLAB_MODULES:
            module = LAKONLAB_MODULES[name]
        index[name] = [module, cls_name]
    path = Path(folder) / MODEL_INDEX
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# -- weights ----------------------------------------------------------------------------------------------

def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob(f"{WEIGHTS_NAME}*.safetensors") if p.is_file())


def resolve_weights(directory: str | os.PathLike, variant: str | None = None) -> tuple[Path, str | None]:
    """The safetensors file of a component folder and its variant.

    ``variant='bf16'`` (say) requires ``diffusion_pytorch_model.bf16.safetensors``. ``variant=None``
    takes ``diffusion_pytorch_model.safetensors`` if present, else the only variant file there is.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingCheckpointFileError(f"component folder not found: {directory}")
    found = _weight_files(directory)
    names = ", ".join(p.name for p in found) or "none"
    if variant is not None:
        path = directory / f"{WEIGHTS_NAME}.{variant}.safetensors"
        if not path.is_file():
            raise MissingCheckpointFileError(f"weights for variant {variant!r} not found: {path} (safetensors "
                                             f"files in {directory}: {names})")
        return path, variant
    plain = directory / f"{WEIGHTS_NAME}.safetensors"
    if plain.is_file():
        return plain, None
    if len(found) == 1:
        v = found[0].name[len(WEIGHTS_NAME) + 1: -len(".safetensors")]
        return found[0], v
    if not found:
        others = sorted(p.name for p in directory.glob(f"{WEIGHTS_NAME}*"))
        hint = f" (found {', '.join(others)}: only .safetensors weights are read)" if others else ""
        raise MissingCheckpointFileError(f"no {WEIGHTS_NAME}[.<variant>].safetensors in {directory}{hint}")
    raise CheckpointError(f"several weight variants in {directory} ({names}); choose one with variant=")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(exc).__name__}: {exc})") from None


def _check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, config_path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in IGNORED_KEYS]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    not_float = [f"{k}: {state[k].dtype}" for k in expected if k in state and not state[k].is_floating_point()]
    problems = []

    def listing(items: list[str]) -> str:
        shown = items[:8]
        more = f", ... ({len(items) - len(shown)} more)" if len(items) > len(shown) else ""
        return ", ".join(shown) + more

    if missing:
        problems.append(f"{len(missing)} missing key(s): {listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {listing(mismatched)}")
    if not_float:
        problems.append(f"non-floating tensors: {listing(not_float)}")
    if problems:
        raise CheckpointError(
            f"{path} does not match the {type(model).__name__} described by {config_path}: " + "; ".join(problems)
        )


def load_module(cls, directory: str | os.PathLike, variant: str | None = None,
                dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> nn.Module:
    """Builds ``cls`` (:class:`GMDiT` or :class:`SpectrumMLP`) from ``directory/config.json`` and loads
    ``directory/diffusion_pytorch_model[.variant].safetensors`` strictly into it.

    ``dtype`` defaults to float32 (the file's dtype is converted); ``device`` to CPU. The returned module
    is in eval mode.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    config = _read_json(config_path, f"{directory.name}/{CONFIG_NAME}")
    path, _ = resolve_weights(directory, variant)
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: invalid {cls.__name__} config ({exc})") from None
    state = _read_safetensors(path)
    _check_state_dict(model, state, path, config_path)
    dtype = torch.float32 if dtype is None else dtype
    device = torch.device("cpu") if device is None else torch.device(device)
    expected = model.state_dict()
    state = {k: state[k].to(device=device, dtype=dtype) for k in expected}
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_buffers()
    return model.eval()


def save_module(model: nn.Module, directory: str | os.PathLike, class_name: str, variant: str | None = None,
                dtype: torch.dtype | None = None) -> Path:
    """Writes ``config.json`` (with ``_class_name``) and the safetensors weights (optionally cast to
    ``dtype``) of a :class:`GMDiT` / :class:`SpectrumMLP` into ``directory``; returns the weight path."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    try:
        import diffusers

        version = diffusers.__version__
    except ImportError:
        version = DIFFUSERS_VERSION
    config = {"_class_name": class_name, "_diffusers_version": version, **cfg}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach()
        if dtype is not None:
            value = value.to(dtype)
        state[key] = value.cpu().contiguous()
    name = f"{WEIGHTS_NAME}.{variant}.safetensors" if variant else f"{WEIGHTS_NAME}.safetensors"
    path = directory / name
    save_file(state, str(path), metadata={"format": "pt"})
    return path


# -- scheduler and VAE --------------------------------------------------------------------------------------

def load_scheduler(directory: str | os.PathLike, class_name: str | None = None):
    """The scheduler of ``directory/scheduler_config.json``; its class comes from ``class_name`` (the
    model index entry), else the file's ``_class_name``, else :class:`FlowEulerODEScheduler`."""
    directory = Path(directory)
    path = directory / SCHEDULER_CONFIG_NAME
    config = _read_json(path, f"scheduler/{SCHEDULER_CONFIG_NAME}")
    name = class_name or config.get("_class_name") or "FlowEulerODEScheduler"
    if name not in SCHEDULER_CLASSES:
        raise CheckpointError(f"{path}: scheduler class {name!r} is not supported "
                              f"(known: {', '.join(sorted(SCHEDULER_CLASSES))})")
    try:
        return SCHEDULER_CLASSES[name].from_config(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid {name} config ({exc})") from None


def diffusers_available() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


VAE_HINT = (
    "install the optional extra with `pip install 'gmflow[diffusers]'` (diffusers' AutoencoderKL decodes the "
    "latents) and keep the SD-VAE in <checkpoint>/vae"
)


def load_vae(directory: str | os.PathLike, variant: str | None = None, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None):
    """diffusers' ``AutoencoderKL`` from ``directory`` (local files only), or ``None`` without diffusers."""
    directory = Path(directory)
    _read_json(directory / CONFIG_NAME, f"vae/{CONFIG_NAME}")
    _, resolved = resolve_weights(directory, variant)
    if not diffusers_available():
        logger.warning("diffusers is not installed: the VAE in %s is not loaded and the pipeline returns latents; "
                       "to get images, %s", directory, VAE_HINT)
        return None
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(str(directory), variant=resolved, torch_dtype=dtype or torch.float32,
                                            local_files_only=True, use_safetensors=True)
    except Exception as exc:
        raise CheckpointError(f"{directory}: cannot load the AutoencoderKL ({type(exc).__name__}: {exc})") from None
    if device is not None:
        vae = vae.to(device)
    return vae.eval()
