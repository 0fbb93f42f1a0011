"""Serving isolation on one box: a worker process lowers its CPU priority, caps its threads and leaves the API a
core before it trains, so `/v1/pose` keeps its latency while a retrain runs (measured by
`poseloop bench isolation`). Child processes (torchrun ranks) inherit the niceness and the affinity."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from continual.settings import Settings

log = logging.getLogger("poseloop.worker")


@dataclass(frozen=True)
class Isolation:
    nice: int
    threads: int
    cpus: tuple[int, ...] | None  # None: affinity left alone (not supported here, or `all`)


def parse_cpus(spec: str, available: set[int]) -> tuple[int, ...] | None:
    """The cores of a `worker_cpus` value, among `available`; None = no restriction."""
    if spec == "all":
        return None
    if spec == "auto":
        rest = sorted(available - {min(available)})
        return tuple(rest) if rest else None
    chosen: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        chosen.update(range(int(first), int(last or first) + 1))
    usable = tuple(sorted(chosen & available))
    if not usable:
        raise ValueError(f"worker_cpus {spec!r} names none of this machine's cores {sorted(available)}")
    return usable


def plan(settings: Settings) -> Isolation:
    """What `isolate` would apply here, from the loop settings and this machine's cores."""
    loop = settings.loop
    available = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cpus = parse_cpus(loop.worker_cpus, available)
    cores = len(cpus) if cpus else len(available)
    threads = loop.worker_threads or max(1, min(cores, len(available) - 1))
    return Isolation(loop.worker_nice, threads, cpus)


def isolate(settings: Settings) -> Isolation:
    """Apply `plan(settings)` to this process (niceness only ever goes up) and log what was applied."""
    chosen = plan(settings)
    current = os.nice(0)
    if chosen.nice > current:
        os.nice(chosen.nice - current)
    if chosen.cpus is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, chosen.cpus)
    os.environ["OMP_NUM_THREADS"] = str(chosen.threads)  # for processes this one starts (torchrun ranks)
    try:
        import torch

        torch.set_num_threads(chosen.threads)
    except ImportError:  # a worker without the train extra runs ONNX Runtime checks only
        pass
    log.info("worker isolation: nice %d, %d threads, cores %s", os.nice(0), chosen.threads, chosen.cpus or "all")
    return chosen
