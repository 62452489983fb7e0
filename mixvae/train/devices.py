"""Which devices a run trains on, the mesh over them, and how a batch and the state are placed.

Data parallelism: a 1-d ``jax.sharding.Mesh`` over ``training.devices`` devices (axis ``data``): this
process's, or in a job of several processes (``mixvae.processes``) the same number from each process.
Each batch is split along its first axis over the mesh; parameters, optimiser state, τ counts, the
data set arrays and the random keys are replicated on every device. The compiled functions are the
single-device ones with the gathered batch constrained to the split layout, so the compiler
partitions the step and inserts the reduction of the gradient and of the epoch sums.

One device places nothing and adds no constraint: its compiled functions are exactly those of a run
without this module. In a job every process holds the whole data set and computes the same steps; the
replicated outputs are whole on every process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mixvae import processes
from mixvae.config.preflight import uneven_batches

DATA_AXIS = "data"
# Evaluation chunks sized from a small split are rounded up to a multiple of this (times the devices).
CHUNK_ROUNDING = 8


def device_count(setting: int | str) -> int:
    """The number of devices ``training.devices`` resolves to ('auto': all local ones; in a job of
    several processes all devices of all of them, and an explicit count takes count / N from each)."""
    local, nproc = jax.local_device_count(), jax.process_count()
    if setting == "auto":
        return local * nproc
    count = int(setting)
    if nproc == 1 and count > local:  # validation refuses this first (config/preflight.py)
        raise ValueError(f"training.devices asks for {count} devices, but this host has {local}")
    if nproc > 1 and (count % nproc or count // nproc > local):
        raise ValueError(f"training.devices: {count} devices asked for, but the {nproc} processes of this job "
                         f"have {local} each; use a multiple of {nproc} up to {local * nproc}, or 'auto'")
    return count


def mesh_devices(count: int) -> list:
    """The devices of the mesh: the first ``count`` of this process, or the first count / N of every
    process of a job, process by process."""
    nproc = jax.process_count()
    if nproc == 1:
        return jax.local_devices()[:count]
    per_process: dict[int, list] = {}
    for device in jax.devices():
        per_process.setdefault(device.process_index, []).append(device)
    return [d for p in sorted(per_process) for d in per_process[p][:count // nproc]]


def join_job(cfg) -> processes.Job | None:
    """The train path's first JAX step: join the job the environment describes (none: nothing happens),
    then check ``training.devices`` and the batch sizes against all of its devices. Raises ValueError
    (``processes.JobError`` included) with the reason."""
    job = processes.join()
    if job is None:
        return None
    count = device_count(cfg.training.devices)
    where = f"training.devices {cfg.training.devices!r} = {count} devices of {job.count} processes"
    problems = [f"{key}: {msg}" for key, msg in uneven_batches(cfg, count, where)]
    if problems:
        raise ValueError("; ".join(problems))
    return job


@dataclass(frozen=True)
class Placement:
    """The devices of one run and where its arrays live."""
    count: int
    mesh: Mesh | None            # None on one device

    @classmethod
    def from_config(cls, cfg) -> "Placement":
        count = device_count(cfg.training.devices)
        if count == 1:
            return cls(1, None)
        return cls(count, Mesh(np.array(mesh_devices(count)), (DATA_AXIS,)))

    def shard_batch(self, tree):
        """Inside a compiled function: every array of ``tree`` split along its first (batch) axis."""
        if self.mesh is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, NamedSharding(self.mesh, PartitionSpec(DATA_AXIS)))

    def replicate(self, tree):
        """A pytree of arrays put whole on every device (unchanged on one device)."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def jit_options(self) -> dict:
        """``jax.jit`` arguments: every input and output replicated (the batch is split inside)."""
        if self.mesh is None:
            return {}
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return {"in_shardings": replicated, "out_shardings": replicated}

    def eval_chunk(self, eval_batch_size: int, largest_split: int) -> int:
        """Images per evaluation call: ``eval_batch_size``, or the larger split rounded up to a multiple
        of 8 and of the device count when that is smaller; always divisible by the device count."""
        step = math.lcm(CHUNK_ROUNDING, self.count)
        return int(min(eval_batch_size, max(step, -(-largest_split // step) * step)))
