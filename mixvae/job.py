"""`mixvae train` in a job of several processes (`mixvae.processes`): joining the job before anything
else uses JAX, and the division of work once joined.

Process 0 opens the MLflow run and hands its id to the others. They compute the same run beside it —
same data, same seed, the same compiled steps over the devices of all processes — but only process 0
talks to MLflow and writes checkpoints, the model and the report: the others keep their records in
memory (``MemoryWriter``), their files in a scratch directory removed at the end, and print only errors.
A single process (no job) goes through here unchanged.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

from mixvae import paths
from mixvae.console import Console
from mixvae.processes import ENV_COUNT, from_env, share_text


def join_job(cfg, single_process_only: bool) -> str | None:
    """Join the job the environment describes and check ``training.devices`` against its devices.
    → the problem that stops training (exit 2), or None (joined, or no job). ``single_process_only``:
    the run is resumed or nested (``--resume``, ``--seeds``, a sweep), which a job does not do."""
    from mixvae.train.devices import join_job as join_and_check
    try:
        if single_process_only and from_env() is not None:
            return f"--resume, --seeds and sweeps train in a single process; unset {ENV_COUNT} for them"
        join_and_check(cfg)
    except ValueError as exc:
        return str(exc)
    return None


class FollowerWriter:
    """The records of a job's process k > 0: a ``MemoryWriter`` under the run id of process 0; its
    scratch directory goes when it closes."""

    run_name = experiment_name = ""
    experiment_id = None

    def __init__(self, run_id: str):
        from mixvae.tracking.writer import MemoryWriter
        self.scratch = Path(tempfile.mkdtemp(prefix="mixvae-process-"))
        self._memory = MemoryWriter(run_id, artifact_root=self.scratch / "artifacts")

    def __getattr__(self, name):
        return getattr(self._memory, name)

    def close(self, timeout: float | None = None) -> None:
        self._memory.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def open_in_job(loaded, console: Console, open_run) -> tuple:
    """The run's writer and where its files go → (loaded, console, writer, run directory).

    One process, or process 0: ``open_run()``, the console as it is, the run's checkpoints directory.
    The others: a ``FollowerWriter`` under process 0's run id, a quiet console, the loaded config with
    the model, the report and checkpoint uploads off, and the scratch directory. Raises
    ``TrackingError`` on every process when process 0 could not open the run."""
    from mixvae.tracking.writer import TrackingError
    job = from_env()
    if job is None:
        writer = open_run()
        return loaded, console, writer, paths.checkpoints_dir(writer.run_id)
    if job.leader:
        try:
            writer = open_run()
        except TrackingError:
            share_text(None)  # the others learn that there is no run
            raise
        share_text(writer.run_id)
        return loaded, console, writer, paths.checkpoints_dir(writer.run_id)
    run_id = share_text(None)
    if run_id is None:
        raise TrackingError("process 0 of this job could not open the MLflow run")
    writer = FollowerWriter(run_id)
    loaded = copy.deepcopy(loaded)
    tracking = loaded.config.tracking
    tracking.log_model = tracking.report = tracking.log_checkpoints = False
    return loaded, Console(quiet=True, verbose=console.verbose), writer, writer.scratch / "run"
