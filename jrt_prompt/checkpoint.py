"""Reading checkpoint folders: config.json and weights in any of the layouts the hubs use.

Weights: ``model.safetensors``, ``pytorch_model.bin``, or either sharded with its ``*.index.json``.
Adapters turn the raw state dict into a RecurrentLM; this module only reads files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


_SPECIAL_FLOATS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def _special_float(obj: dict):
    """transformers writes inf/nan as {"__float__": "Infinity"} (e.g. Mamba-2's time_step_limit)."""
    if obj.keys() == {"__float__"} and obj["__float__"] in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[obj["__float__"]]
    return obj


def read_config(path: str | Path) -> dict:
    path = Path(path)
    cfg = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder: a checkpoint is a folder with config.json and weights")
    if not cfg.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it has no config.json")
    try:
        config = json.loads(cfg.read_text(), object_hook=_special_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg} must hold a JSON object")
    return config


def folder_files(path: str | Path) -> set[str]:
    return {p.name for p in Path(path).iterdir()}


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in ``path``, on CPU, keys as stored."""
    path = Path(path)
    for name in INDEX_FILES:
        index = path / name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (path / shard).is_file():
                    raise CheckpointError(f"{index} names {shard}, which is missing")
                sd.update(_load_file(path / shard))
            return sd
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return _load_file(path / name)
    raise CheckpointError(f"{path} has no weights: expected one of {', '.join(WEIGHT_FILES + INDEX_FILES)}")


def take(sd: dict[str, torch.Tensor], key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``sd[key]`` with a clear error when it is missing or of the wrong shape."""
    if key not in sd:
        raise CheckpointError(f"checkpoint weights lack {key!r}")
    t = sd[key]
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"checkpoint weight {key!r} has shape {tuple(t.shape)}, the config implies {tuple(shape)}")
    return t
