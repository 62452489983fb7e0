"""The spool: one run's tracking calls, kept in order on local disk until the store has them.

The MLflow writer writes every call it is given here first: one JSON file per call, named by its
sequence number (`00000001.json`, …), and a copy of the files an upload sends beside it
(`00000001.files/`). The writer's worker delivers the oldest call first and removes it once the store
has acknowledged it, so the directory holds exactly the calls the store has not acknowledged. After
an outage that outlasted training, or a process that died, `mixvae sync RUN_ID` delivers them.

A run's spool is `<working dir>/.mixvae/checkpoints/<run id>/spool/`, beside its local checkpoints;
`run.json` there names the run and its tracking URI (without a password). This module only reads
and writes the files; what a call is and how it is made lives in delivery.py.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mixvae import paths

SPOOL_DIR = "spool"
META_FILE = "run.json"
HELD_FILE = ".held"
_DIGITS = 8


def spool_dir(run_id: str) -> Path:
    """Where the spool of run `run_id` lives in the working directory."""
    return paths.checkpoints_dir(run_id) / SPOOL_DIR


def runs_with_spools(run_ref: str) -> list[str]:
    """Ids of the runs in the working directory whose id starts with `run_ref` and whose spool
    still holds calls."""
    root = paths.checkpoints_dir(run_ref).parent
    if not run_ref or not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir()
                  if d.name.startswith(run_ref) and Spool(d / SPOOL_DIR).pending())


def without_password(uri: str) -> str:
    """`uri` with the password of its user part removed (`http://alice:secret@host` → `http://alice@host`)."""
    try:
        parts = urlsplit(uri)
        if not parts.password:
            return uri
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))
    except ValueError:
        return ""


class Spool:
    """The calls of one run not yet acknowledged by the store, on disk, oldest first."""

    def __init__(self, directory: str | Path, run_id: str = "", uri: str = ""):
        self.directory = Path(directory)
        self.run_id = run_id
        self.uri = without_password(uri)
        self._lock = threading.Lock()
        self._held = None
        self._next = max(self.pending(), default=0) + 1

    # -- one process at a time -------------------------------------------------------------------

    def hold(self) -> bool:
        """Take the spool for this process: an advisory lock on `.held` that the system releases
        when the process ends, however it ends. False when another live process holds it (on systems
        without `fcntl` every process may)."""
        try:
            import fcntl
        except ImportError:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.directory / HELD_FILE, "a")  # noqa: SIM115  (open while held)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._held = handle
        return True

    def release(self) -> None:
        handle, self._held = self._held, None
        if handle is not None:
            handle.close()

    # -- writing -------------------------------------------------------------------------------

    def append(self, entry: dict, source: Path | None = None) -> int:
        """Keep one call; `source` (a file or directory) is copied beside it, so later changes to it
        do not reach the upload. Returns the call's sequence number."""
        with self._lock:
            seq, self._next = self._next, self._next + 1
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_meta()
        if source is not None:
            files = self.directory / f"{seq:0{_DIGITS}d}.files"
            files.mkdir()
            target = files / source.name
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
            entry = dict(entry, file=target.relative_to(self.directory).as_posix())
        partial = self.directory / f".{seq:0{_DIGITS}d}.partial"
        partial.write_text(json.dumps(entry))
        os.replace(partial, self._entry_path(seq))  # a call is on disk whole or not at all
        return seq

    def _write_meta(self) -> None:
        meta = self.directory / META_FILE
        if not meta.exists():
            meta.write_text(json.dumps({"run_id": self.run_id, "uri": self.uri,
                                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))

    def remove(self, seq: int) -> None:
        """Forget one call (the store has it, or refused it)."""
        self._entry_path(seq).unlink(missing_ok=True)
        shutil.rmtree(self.directory / f"{seq:0{_DIGITS}d}.files", ignore_errors=True)

    def discard(self) -> None:
        """Remove the spool directory (call only when no call is pending), and the run's local
        directory when nothing else is left in it."""
        self.release()
        shutil.rmtree(self.directory, ignore_errors=True)
        try:
            self.directory.parent.rmdir()
        except OSError:
            pass

    # -- reading -------------------------------------------------------------------------------

    def pending(self) -> list[int]:
        """Sequence numbers of the calls on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.stem) for p in self.directory.glob("*.json") if p.stem.isdigit())

    def read(self, seq: int) -> dict:
        return json.loads(self._entry_path(seq).read_text())

    def file(self, entry: dict) -> Path:
        """The copy of the file or directory an upload call sends."""
        return self.directory / entry["file"]

    def meta(self) -> dict:
        try:
            return json.loads((self.directory / META_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _entry_path(self, seq: int) -> Path:
        return self.directory / f"{seq:0{_DIGITS}d}.json"

    def summary(self) -> str:
        """What the pending calls are, in a few words: '37 calls: epochs 21–50, 4 uploads, the status FINISHED'."""
        entries = [self.read(seq) for seq in self.pending()]
        if not entries:
            return "no calls"
        steps = [e["step"] for e in entries if e.get("step") is not None]
        uploads = sum(1 for e in entries if "file" in e)
        statuses = [e["status"] for e in entries if e["op"] == "status"]
        parts = [f"{len(entries)} call{'s' if len(entries) != 1 else ''}"]
        if steps:
            parts.append(f"epoch {steps[0]}" if len(steps) == 1 else f"epochs {min(steps)}–{max(steps)}")
        if uploads:
            parts.append(f"{uploads} upload{'s' if uploads != 1 else ''}")
        if statuses:
            parts.append(f"the status {statuses[-1]}")
        return parts[0] + (": " + ", ".join(parts[1:]) if len(parts) > 1 else "")

    def final_status(self) -> str | None:
        """The status the run is to end with, when the spool holds one."""
        statuses = [self.read(seq)["status"] for seq in self.pending() if self.read(seq)["op"] == "status"]
        return statuses[-1] if statuses else None
