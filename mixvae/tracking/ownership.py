"""Who owns a RUNNING run: the host and process training it, and when it last beat.

A process that trains a run records itself in the run's tags when it opens the run: host name and
boot time (a namesake machine, or the same one after a restart, is not the owner's), process id and
the process's start time (so that a later process that happens to get the same id is not mistaken
for the owner), and a heartbeat, the time of the latest epoch logged (throttled to one tag write
every `HEARTBEAT_EVERY_S` seconds). A run whose process was killed outright (`kill -9`,
out of memory, a lost node) stays RUNNING in MLflow; these tags let `mixvae train --resume` and
`mixvae runs` tell such a run from one still training:

- `gone`: the owner ran on this host, since its last boot, and no process with its id and start
  time exists now (a zombie counts as gone): provably nobody trains it;
- `alive`: the owner ran on this host and is still there;
- `remote`: the owner ran on another host, or on one of this host's name before its last boot:
  mixvae cannot know, the heartbeat tells a person;
- `unknown`: the run records no owner (runs of older versions).

`OwnedWriter` wraps the run's writer while this process trains it: it beats with the epochs and,
for a resumed run, does not log again the epochs the run already holds (see `prepare_resume`).
This module does not import mlflow.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import psutil

OWNER_HOST = "mixvae.owner.host"
OWNER_BOOT = "mixvae.owner.boot"         # the host's boot time, seconds since the epoch
OWNER_PID = "mixvae.owner.pid"
OWNER_STARTED = "mixvae.owner.started"   # the owner process's start time, seconds since the epoch
HEARTBEAT = "mixvae.heartbeat"           # UTC time of the latest heartbeat, ISO 8601
HEARTBEAT_EVERY_S = 30.0
SAME_TIME_S = 2.0                        # start or boot times closer than this are the same (clock jitter)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def owner_tags() -> dict[str, str]:
    """This process as the owner of a run, with a first heartbeat."""
    started = psutil.Process(os.getpid()).create_time()
    return {OWNER_HOST: socket.gethostname(), OWNER_BOOT: f"{psutil.boot_time():.0f}", OWNER_PID: str(os.getpid()),
            OWNER_STARTED: f"{started:.3f}", HEARTBEAT: utc_now()}


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float
    heartbeat: str | None
    boot: float

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Owner | None:
        try:
            return cls(tags[OWNER_HOST], int(tags[OWNER_PID]), float(tags[OWNER_STARTED]), tags.get(HEARTBEAT),
                       float(tags[OWNER_BOOT]))
        except (KeyError, ValueError):
            return None

    def state(self) -> str:
        """`gone`, `alive` or `remote` (see the module docstring)."""
        if self.host != socket.gethostname() or abs(psutil.boot_time() - self.boot) >= SAME_TIME_S:
            return "remote"
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.started) >= SAME_TIME_S:
                return "gone"  # the id now belongs to another process
            return "gone" if process.status() == psutil.STATUS_ZOMBIE else "alive"
        except psutil.NoSuchProcess:
            return "gone"
        except psutil.AccessDenied:
            return "alive"  # it exists; whose it is cannot be read, so it is not provably gone

    def describe(self) -> str:
        """'pid 123 on host h, last heartbeat 2026-01-01T10:00:00Z (4 min ago)'."""
        return f"pid {self.pid} on host {self.host}, last heartbeat {heartbeat_text(self.heartbeat)}"


def owner_state(tags: Mapping[str, str]) -> str:
    owner = Owner.from_tags(tags)
    return "unknown" if owner is None else owner.state()


def heartbeat_text(heartbeat: str | None) -> str:
    if not heartbeat:
        return "never"
    try:
        then = datetime.strptime(heartbeat, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return heartbeat
    seconds = max(0, int((datetime.now(timezone.utc) - then).total_seconds()))
    ago = (f"{seconds} s" if seconds < 120 else f"{seconds // 60} min" if seconds < 7200
           else f"{seconds // 3600} h")
    return f"{heartbeat} ({ago} ago)"


def may_take_over(run_id: str, tags: Mapping[str, str]) -> tuple[bool, str]:
    """May `--resume` (without --force) continue this RUNNING run? → (yes or no, the line to print)."""
    owner = Owner.from_tags(tags)
    if owner is None:
        return False, (f"run {run_id} is RUNNING and records no owner process; "
                       "if no process is training it, add --force")
    state = owner.state()
    if state == "gone":
        return True, f"run {run_id} is RUNNING but its process is gone ({owner.describe()}); resuming it"
    if state == "alive":
        return False, (f"run {run_id} is RUNNING and still trained by {owner.describe()}; "
                       "stop that process first, or add --force")
    where = "another host" if owner.host != socket.gethostname() else "this host before its last restart"
    return False, (f"run {run_id} is RUNNING on {where} ({owner.describe()}); "
                   "if no process is training it there, add --force")


class OwnedWriter:
    """The run's writer while this process trains it: every call goes to `inner`; `log_epoch` also
    beats (at most every `every_s` seconds) and leaves out the epochs in `skip_epochs`, the ones
    the run already holds from before a hard kill (trained again from the checkpoint, they give the
    same values, so each epoch stays in the history exactly once)."""

    def __init__(self, inner, skip_epochs: Iterable[int] = (), every_s: float = HEARTBEAT_EVERY_S):
        self.inner = inner
        self.skip_epochs = frozenset(int(e) for e in skip_epochs)
        self.every_s = every_s
        self._last_beat = time.monotonic()

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        if int(step) not in self.skip_epochs:
            self.inner.log_epoch(step, metrics)
        now = time.monotonic()
        if now - self._last_beat >= self.every_s:
            self._last_beat = now
            self.inner.set_tags({HEARTBEAT: utc_now()})

    def resume_note(self, from_epoch: int) -> str:
        """For the resume line: which epochs after the checkpoint the run already holds."""
        again = sorted(e for e in self.skip_epochs if e > from_epoch)
        if not again:
            return ""
        return (f"; epochs {again[0]}–{again[-1]} were logged before the process died: "
                "trained again, not logged again")

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __enter__(self) -> OwnedWriter:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.inner.__exit__(*exc)
