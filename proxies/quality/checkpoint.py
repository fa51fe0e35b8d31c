"""Rung checkpoints of the short-training proxy: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model's weights, the optimizer's moments, the data sampler's RNG state and the step, as
safetensors (data, never pickles), plus a JSON header saying which training it belongs to. It is written
atomically (temporary file, then rename), so a reader sees a whole checkpoint or none. A checkpoint that is
missing, unreadable or from another training is ignored: the caller trains from scratch under the same schedule,
which gives the same result, only slower. `RungCheckpoints` decides which checkpoint one training reads and writes.
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


class RungCheckpoints:
    """The rung checkpoints of one multi-fidelity training: it resumes from the previous rung's checkpoint when
    there is a valid one, and saves its own at the end of its stable phase when a higher rung may continue from
    it. Inactive for single-fidelity training (rung None) or without budget.checkpoint_dir.

    The header names the genome, seed, ladder, step size and every proxy setting (`settings`: the config's
    identity()), so a checkpoint is only continued by the same training."""

    def __init__(self, budget: Any, settings: dict[str, Any], genome_id: str, seed: int, rung: int | None,
                 tokens_per_step: int, prev_stable_end: int | None) -> None:
        self.active = rung is not None and budget.checkpoint_dir is not None
        self.directory, self.genome_id, self.seed, self.rung = budget.checkpoint_dir, genome_id, seed, rung or 0
        self.top = len(budget.ladder) - 1
        self.header = {"genome_id": genome_id, "seed": seed, "ladder": [int(t) for t in budget.ladder],
                       "tokens_per_step": tokens_per_step, "proxy": json.loads(json.dumps(settings, default=str))}
        self.prev_stable_end = prev_stable_end       # the step the previous rung's checkpoint was taken at

    def _path(self, rung: int) -> Path:
        return checkpoint_path(self.directory, self.genome_id, rung, self.seed)

    def resume(self, model: Any, optimizer: Any, generator: Any) -> dict[str, Any] | None:
        """Load the previous rung's checkpoint into model/optimizer/generator: its header, or None (from scratch)."""
        if not self.active or self.rung == 0:
            return None
        return load_training_state(self._path(self.rung - 1), model, optimizer, generator,
                                   {**self.header, "step": self.prev_stable_end})

    def save_step(self, stable_end: int) -> int | None:
        """The step after which to save (the end of this rung's stable phase), or None: no higher rung follows."""
        return stable_end if self.active and self.rung < self.top else None

    def save(self, model: Any, optimizer: Any, generator: Any, step: int, curve: list,
             window: tuple[float, int]) -> None:
        """Save after `step` steps, with the training curve so far and the partial logging window."""
        save_training_state(self._path(self.rung), model, optimizer, generator,
                            {**self.header, "step": step, "curve": curve, "window": list(window)})


__all__ = ["checkpoint_path", "save_training_state", "load_training_state", "remove_rung_checkpoints",
           "RungCheckpoints", "CHECKPOINT_DIR"]
