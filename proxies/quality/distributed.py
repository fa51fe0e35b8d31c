"""Data-parallel short training: one candidate trained with torch DDP by the ranks of a process group.

The training loop (train_loop.py) asks `current()` whether it runs inside an initialised torch.distributed group
of more than one rank (Ray Train's TorchTrainer sets one up per trial: flashsearch/search/backends.py; tests use
torch.multiprocessing). If so, every rank builds the same model from the same seed, draws the same global batch
from the same seeded generator and keeps its contiguous 1/world_size of the rows; DDP averages the gradients, so
each step equals the single-worker step on the whole batch (up to float summation order). The schedule, the step
count and the score do not depend on the number of workers. Whatever decides the course of the run (the loss
that is checked for divergence, the time limit) is agreed over all ranks, so no rank leaves a collective the
others are waiting in. Rank 0 writes rung checkpoints; every rank reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from flashsearch.errors import FlashsearchError


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the group training one candidate."""

    rank: int
    world_size: int

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def _device(self) -> str:
        # NCCL reduces tensors on the GPU, gloo on the CPU.
        return "cuda" if dist.get_backend() == "nccl" else "cpu"

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model under DDP (gradients averaged over the ranks in backward); parameters stay `model`'s."""
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: torch.Tensor) -> float:
        """The mean over the ranks of a scalar (every rank gets the same float)."""
        t = value.detach().to(self._device(), torch.float64).reshape(1)
        dist.all_reduce(t)
        return float(t) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any."""
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def sum2(self, a: float, b: float) -> tuple[float, float]:
        """(sum of a, sum of b) over the ranks."""
        t = torch.tensor([a, b], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return float(t[0]), float(t[1])

    def barrier(self) -> None:
        dist.barrier()


def current() -> DataParallel | None:
    """The data-parallel group this process trains in, or None (one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return DataParallel(dist.get_rank(), dist.get_world_size())


def rank_rows(batch_size: int, dp: DataParallel | None) -> slice:
    """This rank's contiguous rows of a global batch."""
    if dp is None:
        return slice(0, batch_size)
    if batch_size % dp.world_size:
        raise FlashsearchError(f"short_train.batch_size={batch_size} does not split evenly over "
                               f"ray.workers_per_trial={dp.world_size} workers; make it a multiple")
    per = batch_size // dp.world_size
    return slice(dp.rank * per, (dp.rank + 1) * per)


class RankRows:
    """A sampler that draws the global batch (so its generator advances as on one worker) and keeps this rank's
    rows: for samplers that do not split batches themselves (the byte corpus's WindowSampler)."""

    def __init__(self, sampler: Any, rows: slice) -> None:
        self.sampler, self.rows = sampler, rows
        self.generator = sampler.generator      # what rung checkpoints save and restore

    def sample(self) -> torch.Tensor:            # [B / world_size, T+1]
        return self.sampler.sample()[self.rows]


__all__ = ["DataParallel", "current", "rank_rows", "RankRows"]
