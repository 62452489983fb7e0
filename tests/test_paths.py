"""One working directory: every output location derives from MIXVAE_WORKDIR (or the current directory)."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

from mixvae import paths
from mixvae.cli import main
from mixvae.tracking_uri import default_tracking_uri, resolve_tracking_uri


def test_the_working_directory_comes_from_the_environment_else_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "w"))
    assert paths.work_dir() == (tmp_path / "w").resolve()
    monkeypatch.delenv(paths.ENV_VAR)
    monkeypatch.chdir(tmp_path)
    assert paths.work_dir() == tmp_path.resolve()


def test_outputs_derive_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    root = tmp_path.resolve()
    assert paths.checkpoints_dir("abc") == root / ".mixvae" / "checkpoints" / "abc"
    assert paths.under_work_dir("reports") == root / "reports"
    assert paths.under_work_dir("/elsewhere/reports") == Path("/elsewhere/reports")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == f"sqlite:///{root}/mlflow.db"
    assert resolve_tracking_uri(None, None) == (f"sqlite:///{root}/mlflow.db", "default")


def test_the_workdir_option_sets_the_working_directory_for_the_command(tmp_path, monkeypatch):
    target = tmp_path / "runs-here"
    seen = {}

    @main.command("where")
    def where():
        seen["dir"] = paths.work_dir()

    try:
        result = CliRunner().invoke(main, ["--workdir", str(target), "where"])
    finally:
        main.commands.pop("where")
    assert result.exit_code == 0, result.output
    assert seen["dir"] == target.resolve() and target.is_dir()
    assert os.environ[paths.ENV_VAR] == str(target.resolve())


def test_the_default_store_keeps_new_experiments_artifacts_in_the_working_directory(tmp_path, monkeypatch):
    from mixvae.tracking.mlflow_run import artifact_location

    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "w"))
    root = (tmp_path / "w").resolve()
    assert artifact_location(paths.default_store_uri(), "my exp/1") == (root / "mlruns" / "my_exp_1").as_uri()
    assert artifact_location("http://127.0.0.1:5000", "x") is None  # a server decides for itself


def test_printed_paths_are_relative_under_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.shown(tmp_path / "reports" / "r1" / "REPORT.md") == "reports/r1/REPORT.md"
    assert paths.shown("/elsewhere/REPORT.md") == "/elsewhere/REPORT.md"
