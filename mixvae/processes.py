"""A training job of several processes (one per host, or several on one machine): what the environment
says about it, joining it once through ``jax.distributed.initialize``, and which process leads.

The environment of every process of a job holds

- ``JAX_COORDINATOR_ADDRESS``: ``host:port`` of process 0, reachable from every process (JAX reads it
  itself; process 0 listens on that port);
- ``MIXVAE_NUM_PROCESSES``: how many processes the job has;
- ``MIXVAE_PROCESS_ID``: this process's index, 0 … N − 1.

Without ``MIXVAE_NUM_PROCESSES`` and ``MIXVAE_PROCESS_ID`` (or with one process) there is no job: JAX's
distributed runtime is never started, whatever else is set. Process 0 leads: it alone talks to MLflow;
the others compute the same run beside it. Only the train path joins (``join``); validation reads the
environment (``problems``) and never contacts another process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "MIXVAE_NUM_PROCESSES", "MIXVAE_PROCESS_ID"
# Seconds a process waits for the others to join (JAX's own default).
JOIN_TIMEOUT_S = 300
# Bytes of text process 0 can hand to the others (a run id is 32).
SHARED_TEXT_BYTES = 256


class JobError(ValueError):
    """The environment describes a job that cannot be joined."""


@dataclass(frozen=True)
class Job:
    address: str    # host:port of process 0
    count: int      # processes in the job, ≥ 2
    index: int      # this process, 0 … count − 1

    @property
    def leader(self) -> bool:
        return self.index == 0


def _integer(environ: Mapping[str, str], name: str) -> int:
    text = environ.get(name, "").strip()
    try:
        return int(text)
    except ValueError:
        raise JobError(f"{name} must be an integer (got {text!r})") from None


def from_env(environ: Mapping[str, str] | None = None) -> Job | None:
    """The job the environment describes; None for a single process. Raises ``JobError`` when the
    variables are incomplete or inconsistent."""
    environ = os.environ if environ is None else environ
    if ENV_COUNT not in environ and ENV_ID not in environ:
        return None
    missing = [name for name in (ENV_COUNT, ENV_ID, ENV_ADDRESS) if not environ.get(name, "").strip()]
    if missing:
        raise JobError(f"a job of several processes needs {ENV_COUNT}, {ENV_ID} and {ENV_ADDRESS}; "
                       f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set")
    count, index = _integer(environ, ENV_COUNT), _integer(environ, ENV_ID)
    address = environ[ENV_ADDRESS].strip()
    if count < 1:
        raise JobError(f"{ENV_COUNT} must be ≥ 1 (got {count})")
    if not 0 <= index < count:
        raise JobError(f"{ENV_ID} must be 0 … {count - 1} for {ENV_COUNT}={count} (got {index})")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise JobError(f"{ENV_ADDRESS} must be host:port (got {address!r})")
    return None if count == 1 else Job(address, count, index)


def problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """What is wrong with the job the environment describes (nothing for a single process)."""
    try:
        from_env(environ)
    except JobError as exc:
        return [str(exc)]
    return []


_joined: Job | None = None


def join() -> Job | None:
    """Join the job the environment describes, once per process; a no-op for a single process.

    Must come before anything initialises a JAX backend (counting devices included): JAX refuses to
    join afterwards. Raises ``JobError`` for a bad environment or a job that could not be joined."""
    global _joined
    job = from_env()
    if job is None or _joined == job:
        return job
    if _joined is not None:
        raise JobError(f"this process already joined {_joined}; it cannot join {job}")
    import jax
    try:
        jax.distributed.initialize(job.address, job.count, job.index, initialization_timeout=JOIN_TIMEOUT_S)
    except (RuntimeError, ValueError) as exc:
        raise JobError(f"could not join the job at {job.address} as process {job.index} of {job.count}: "
                       f"{str(exc).strip().splitlines()[0]}") from None
    _joined = job
    return job


def is_leader() -> bool:
    """This process talks to MLflow: a single process, or process 0 of a job."""
    job = from_env()
    return job is None or job.leader


def share_text(text: str | None) -> str | None:
    """Process 0's ``text`` on every process of the joined job (its own on a single process). None
    travels as None: process 0 tells the others that it has nothing (its run did not open)."""
    if _joined is None:
        return text
    import numpy as np
    from jax.experimental import multihost_utils

    buffer = np.zeros(SHARED_TEXT_BYTES + 1, np.uint8)
    if _joined.leader and text is not None:
        data = text.encode()[:SHARED_TEXT_BYTES]
        buffer[0], buffer[1:1 + len(data)] = 1, np.frombuffer(data, np.uint8)
    shared = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    if not shared[0]:
        return None
    return bytes(shared[1:]).rstrip(b"\0").decode()
