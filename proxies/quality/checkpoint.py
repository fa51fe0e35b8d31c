"""Rung checkpoints of the short-training proxy: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model's weights, the optimizer's moments, the data sampler's RNG state and the step, as
safetensors (data, never pickles), plus a JSON header saying which training it belongs to. It is written
atomically (temporary file, then rename), so a reader sees a whole checkpoint or none. A checkpoint that is
missing, unreadable or from another training is ignored: the caller trains from scratch under the same schedule,
which gives the same result, only slower.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CHECKPOINT_DIR = "checkpoints"   # inside a run's out_dir


def checkpoint_path(directory: str | os.PathLike, genome_id: str, rung: int, seed: int) -> Path:
    """Where the checkpoint of `genome_id` at the end of rung `rung`'s stable phase lives."""
    return Path(directory) / genome_id / f"rung{rung}-seed{seed}.safetensors"


def save_training_state(path: str | os.PathLike, model: Any, optimizer: Any, generator: Any,
                        header: dict[str, Any]) -> Path:
    """Write model + optimizer + sampler RNG (+ header) atomically."""
    import torch
    from safetensors.torch import save_file

    from flashsearch.atomic import atomic_path

    tensors: dict[str, torch.Tensor] = {}
    # clone: tied weights share storage, which safetensors refuses; loading copies into the tied parameter once.
    for name, t in model.state_dict().items():
        tensors[f"model.{name}"] = t.detach().clone().contiguous()
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().clone().contiguous().reshape(-1) \
                    if value.dim() == 0 else value.detach().clone().contiguous()
    tensors["sampler.rng"] = generator.get_state().clone()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"flashsearch": json.dumps(header, sort_keys=True)})
    return Path(path)


def load_training_state(path: str | os.PathLike, model: Any, optimizer: Any, generator: Any,
                        expect: dict[str, Any]) -> dict[str, Any] | None:
    """Restore a checkpoint into model/optimizer/generator and return its header, or None (nothing changed) when
    the file is missing, unreadable, or its header disagrees with `expect` on any key."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("flashsearch", "{}"))
            if any(header.get(k) != v for k, v in json.loads(json.dumps(expect)).items()):
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # a damaged file is the same as a missing one: train from scratch
        return None
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if set(model_sd) != set(model.state_dict()):
        return None
    opt_sd = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value.reshape(()) if name == "step" else value
    model.load_state_dict(model_sd)
    opt_sd["state"] = state
    optimizer.load_state_dict(opt_sd)
    generator.set_state(tensors["sampler.rng"].to(torch.uint8))
    return header


def remove_rung_checkpoints(directory: str | os.PathLike, genome_id: str, rung: int) -> None:
    """Delete a candidate's rung-`rung` checkpoints (every seed) once no longer needed, and its folder once
    empty."""
    folder = Path(directory) / genome_id
    for path in folder.glob(f"rung{rung}-seed*.safetensors"):
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # other rungs' checkpoints remain, or it never existed


__all__ = ["checkpoint_path", "save_training_state", "load_training_state", "remove_rung_checkpoints", "CHECKPOINT_DIR"]
