"""Data-parallel training under torchrun: the process group, each process's share of an epoch, the reductions
that make every rank take the same decisions, and the end-of-run check that the replicas still agree.

`torchrun --nproc_per_node=N -m training fit ...` starts N processes; `from_environment` joins them (gloo on CPU,
NCCL on CUDA, one GPU per process chosen by LOCAL_RANK) and the trainer wraps its network in
DistributedDataParallel. Rank 0 alone writes the run folder.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import distributed as dist
from torch import nn


class ReplicasDiverged(RuntimeError):
    """The processes of a data-parallel run ended with different weights: their updates were not the same."""

    def __init__(self, digests: list[str]):
        odd = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        super().__init__(f"the replicas diverged: rank(s) {odd} hold weights different from rank 0's "
                         f"(parameter sha256 per rank: {[d[:12] for d in digests]})")


@dataclass
class Distributed:
    """This process's place in a torchrun launch; made by `from_environment`."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # gloo (CPU) or nccl (CUDA)
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes logs, checkpoints, plots and the summary."""
        return self.rank == 0

    def wrap(self, network: nn.Module) -> nn.Module:
        """The network in DistributedDataParallel: gradients averaged across ranks in backward, and buffers
        (batch-norm running statistics) broadcast from rank 0 before every forward (broadcast_buffers)."""
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(network, device_ids=device_ids)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's share of an epoch's order, through a DistributedSampler (no shuffle of its own): every
        world_size-th position, the epoch padded with its first samples so that every rank takes as many steps.
        Consecutive batches of B / world_size per rank then make up exactly the batches of B that one process
        takes from `order`."""
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(len(order)), num_replicas=self.world_size, rank=self.rank, shuffle=False)
        return order[torch.as_tensor(list(sampler), dtype=torch.long)]

    def sum(self, *values: float | torch.Tensor) -> list[float]:
        """Each value summed over the ranks (one all_reduce in float64)."""
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled; tensors inside must be on the CPU)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_replicas(self, network: nn.Module) -> dict:
        """Compare a hash of every rank's parameters; raise ReplicasDiverged unless all agree.

        Parameters only: batch-norm running statistics are each rank's own between forwards (DDP copies rank 0's
        before every forward), and the saved model holds rank 0's."""
        digest = parameter_digest(network)
        digests: list[str] = [""] * self.world_size
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise ReplicasDiverged(digests)
        return {"world_size": self.world_size, "backend": self.backend, "replicas_identical": True,
                "param_sha256": digest}

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Seed this rank's global RNG (dropout masks) from (seed, epoch, rank): ranks draw different masks for
        their different samples, and a resumed run draws the masks an uninterrupted one does."""
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, self.rank]).generate_state(1)[0]))

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        dist.barrier()

    def close(self) -> None:
        """Leave the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()


def parameter_digest(network: nn.Module) -> str:
    """sha256 of every parameter's bytes, in order (bit-identical weights give the same digest)."""
    digest = hashlib.sha256()
    for param in network.parameters():
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def from_environment(environ: Mapping[str, str] = os.environ) -> Distributed | None:
    """Join the process group of a torchrun launch; None when this process was not started by torchrun.

    Backend NCCL with the GPU numbered LOCAL_RANK when CUDA is available, else gloo on the CPU.
    """
    if not dist.is_torchelastic_launched():
        if int(environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(f"WORLD_SIZE={environ['WORLD_SIZE']} is set but this process was not started by "
                             "torchrun; launch it as `torchrun --nproc_per_node=N -m training fit ...`")
        return None
    local_rank = int(environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank}, but this machine has {torch.cuda.device_count()} CUDA "
                             "device(s): start at most that many processes per node (one GPU each), or hide the "
                             "GPUs (CUDA_VISIBLE_DEVICES='') to train on the CPU with gloo")
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, backend, device)
