"""Where mixvae writes on this machine: every output location derives from one working directory.

The working directory is `$MIXVAE_WORKDIR` (the CLI's `--workdir` sets it), else the current
directory. Beneath it:

- `.mixvae/checkpoints/<run id>/`  local checkpoints and diagnostics of a training run
- `reports/`                        REPORT.md / COMPARE.md (a relative `tracking.report_dir` is read from here)
- `mlflow.db`                       MLflow's default local store, when no tracking URI is given
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ENV_VAR = "MIXVAE_WORKDIR"


def work_dir() -> Path:
    """The working directory, absolute."""
    return Path(os.environ.get(ENV_VAR) or os.getcwd()).expanduser().resolve()


def under_work_dir(path: str | Path) -> Path:
    """`path` itself when absolute, else the same path inside the working directory."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else work_dir() / path


def checkpoints_dir(run_id: str) -> Path:
    """Local checkpoints and diagnostics of one run."""
    return work_dir() / ".mixvae" / "checkpoints" / run_id


def default_store_uri() -> str:
    """MLflow's default local store (`mlflow.db`), placed in the working directory."""
    return f"sqlite:///{work_dir() / 'mlflow.db'}"


def shown(path: str | Path) -> str:
    """A path as printed to the user: relative when it lies under the current directory."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def unwritable(directory: str | Path) -> str | None:
    """Why files cannot be created in `directory` (created first when missing), else None.

    Looks at the nearest part of the path that exists: it must be a directory in which a file can be
    made. The probe is a nameless temporary file, gone when the check returns; nothing else is written."""
    probe = Path(directory).expanduser().absolute()
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return f"{probe} is not writable ({exc.strerror or type(exc).__name__})"
    return None
