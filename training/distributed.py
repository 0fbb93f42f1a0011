"""Data-parallel training with torch.distributed: torchrun launch, rank context, and the few collectives the loop needs.

One process per device (NCCL on GPU, gloo on CPU). Every rank runs the same loop on its shard of each global batch:
DistributedSampler semantics (rank r takes every world-th sample of the epoch's shuffled order), gradients averaged
by DistributedDataParallel, BN buffers (students' and EMA teachers') broadcast from rank 0 on every forward, and
teacher updates (EMA, reviewer snapshots) computed identically on every rank from identical weights. Only rank 0
validates, writes checkpoints, logs and exports; the others receive its decisions (best metric, stop flags).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """Each rank owns one GPU (its local rank); CPU ranks share the host."""
        if requested.type == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return requested

    def shard(self, global_batch: int) -> int:
        """Per-rank batch size; the global batch (the config's) must split evenly."""
        if global_batch % self.world_size:
            raise ValueError(f"batch_size {global_batch} is not divisible by {self.world_size} processes")
        return global_batch // self.world_size

    # ------------------------------------------------------------------ collectives (no-ops on one process)
    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged scalars over ranks (each rank saw a different shard)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (stop decisions must be unanimous)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, value: float) -> float:
        """Rank 0's value on every rank (validation runs on rank 0 only)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, src=0)
        return float(t.item())

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BN running statistics) everywhere, before validation and snapshots."""
        if not self.enabled:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def context_from_env() -> DistContext:
    """The torchrun environment (RANK / WORLD_SIZE / LOCAL_RANK), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    return DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    """NCCL for CUDA ranks, gloo on CPU; idempotent."""
    if not ctx.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=timedelta(minutes=30),
    )


def shutdown() -> None:
    """Barrier, then destroy: a rank that tears gloo down while its peer still finishes its last step can abort
    the peer ("terminate called without an active exception", seen once in the two-process retrain test)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def torchrun_argv(nproc: int, module: str, args: list[str]) -> list[str]:
    """`torchrun --standalone --nproc_per_node N -m module args…` through this interpreter (no PATH lookup)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *args,
    ]


def torchrun_env(nproc: int) -> dict[str, str]:
    """This environment, with the host's cores split between the ranks unless OMP_NUM_THREADS is set: CPU ranks
    that each spawn a thread per core oversubscribe the host and spin (several times slower)."""
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)), **os.environ}


def launch(nproc: int, module: str, args: list[str]) -> int:
    """Run `module` under torchrun with `nproc` processes; returns the launcher's exit status."""
    return subprocess.call(torchrun_argv(nproc, module, args), env=torchrun_env(nproc))
