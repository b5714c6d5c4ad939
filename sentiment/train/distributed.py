"""Processes under ``torchrun``: ranks, the device, each rank's share of an epoch, RNG state.

Run plainly, a run is rank 0 of 1 and nothing here touches ``torch.distributed``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import SentimentError


@dataclass
class Processes:
    """This process's place under torchrun (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def start(cls, device_kind: str) -> "Processes":
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return cls()
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def share(self, value):
        """Rank 0's value, on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def device_kind(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise SentimentError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def deal_out(order: np.ndarray, per_rank: int, procs: "Processes") -> np.ndarray:
    """This process's share of an epoch's ``order``: every world-th review, wrapped around so
    each process runs ``per_rank`` reviews (the same number of steps everywhere)."""
    return np.concatenate([order, order])[:per_rank * procs.world][procs.rank::procs.world]


def wrap(model: nn.Module, device: torch.device, procs: Processes) -> nn.Module:
    """``model`` under DistributedDataParallel when several processes train, else itself."""
    if procs.world == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def restore_rng(checkpoint: dict, procs: Processes) -> None:
    """Put back the random-number states a checkpoint saved for this process (rank)."""
    states = checkpoint["rng"]
    torch.set_rng_state(states[procs.rank] if procs.rank < len(states) else states[0])


def gather_rng(procs: Processes) -> list[torch.Tensor]:
    state = torch.get_rng_state()
    if procs.world == 1:
        return [state]
    states = [torch.empty_like(state) for _ in range(procs.world)]
    dist.all_gather_object(states, state)
    return states
