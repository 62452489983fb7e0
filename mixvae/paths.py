"""Where mixvae writes on this machine: every output location derives from one working directory.

The working directory is `$MIXVAE_WORKDIR` (the CLI's `--workdir` sets it), else the current
directory. Beneath it:

- `.mixvae/checkpoints/<run id>/`  local checkpoints and diagnostics of a training run
- `reports/`                        REPORT.md / COMPARE.md (a relative `tracking.report_dir` is read from here)
- `mlflow.db`                       MLflow's default local store, when no tracking URI is given
"""

from __future__ import annotations

import os
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
