"""`mixvae validate` and `mixvae train` refuse the same configs the same way.

Every class of config and data mistake that `train` would find before its first epoch (the schema, the
cross-field rules, the tracking URI, names MLflow refuses, output directories that cannot be written,
data files that are not what they claim) goes through both commands: both exit 2 with the same message,
and `train` stops before any run exists (no store, no checkpoints, no reports).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fixtures import write_idx_dir, write_npz
from mixvae import paths
from mixvae.cli import main

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No ambient tracking URI or experiment; the variables `main` sets with setdefault are restored."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


# Each case: (global options, config, --set items, environment) made in the test's directory, and the
# message line both commands must print.

def _set(*items: str):
    return lambda tmp: ([], "quick", list(items), {})


def _file(name: str, text: str, *items: str):
    def make(tmp):
        (tmp / name).write_text(text)
        return [], name, list(items), {}
    return make


def _env(name: str, value: str):
    return lambda tmp: ([], "quick", [], {name: value})


def _option(*options: str):
    return lambda tmp: (list(options), "quick", [], {})


def _a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("a file, not a directory\n")
    return tmp / "afile"


def _workdir_with_a_file_for_dot_mixvae(tmp):
    work = tmp / "work"
    work.mkdir()
    (work / ".mixvae").write_text("")
    return [], "quick", [], {paths.ENV_VAR: str(work)}


def _report_dir_under_a_file(tmp):
    return [], "quick", [f"tracking.report_dir={_a_file(tmp)}/reports"], {}


def _sqlite_store_under_a_file(tmp):
    return [], "quick", [f"tracking.uri=sqlite:///{_a_file(tmp)}/mlflow.db"], {}


def _npz(make_file):
    def make(tmp):
        path = tmp / "data.npz"
        make_file(path)
        return [], "quick", ["data.dataset=npz", f"data.path={path}", "data.test_source=pool"], {}
    return make


def _truncated_idx(tmp):
    directory = write_idx_dir(tmp / "mnist", gz=False)
    labels = directory / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:200])
    return [], "quick", ["data.dataset=mnist", f"data.path={directory}"], {}


def _truncated_idx_gz(tmp):
    directory = write_idx_dir(tmp / "mnist")
    images = directory / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:300])
    return [], "quick", ["data.dataset=mnist", f"data.path={directory}"], {}


IMAGES = np.zeros((60, 8, 8), np.uint8)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


CASES = {
    # the schema and the cross-field rules
    "unknown key": (_set("model.num_componets=12"),
                    "  --set model.num_componets: unknown key; did you mean 'model.num_components'?"),
    "out of range": (_set("training.batch_size=-8"), "  training.batch_size must be ≥ 1 (got -8)"),
    "cross-field rule": (_set("model.top_m_gating=20"), "  model.top_m_gating: M must be ≤ K (M = 20, K = 10)"),
    "yaml syntax": (_file("bad.yaml", "model: [1, 2\n"), "  YAML syntax error at line "),
    "missing config": (lambda tmp: ([], "nope.yaml", [], {}), "config file not found: nope.yaml"),
    # the tracking URI, wherever it comes from
    "file store in the config": (_set("tracking.uri=file:./mlruns"),
                                 "  tracking.uri: tracking URI 'file:./mlruns' is a file store: file stores are "
                                 "not supported; use sqlite:///path/mlflow.db or a server"),
    "file store in the environment": (_env("MLFLOW_TRACKING_URI", "./mlruns"),
                                      "  MLFLOW_TRACKING_URI: tracking URI './mlruns' is a file store"),
    "file store as an option": (_option("--tracking-uri", "file:///tmp/mlruns"),
                                "  --tracking-uri: tracking URI 'file:///tmp/mlruns' is a file store"),
    "unknown scheme": (_set("tracking.uri=htp://localhost:5000"),
                       "  tracking.uri: tracking URI scheme 'htp:' is not one MLflow can open"),
    "server without host": (_set("tracking.uri=http://"),
                            "  tracking.uri: tracking URI 'http://…' names no host; write http://host:port"),
    "two database drivers": (_set("tracking.uri=postgresql+a+b://db/mlflow"),
                             "  tracking.uri: tracking URI scheme 'postgresql+a+b:' names more than one driver"),
    # names MLflow refuses
    "empty experiment name": (_set("tracking.experiment_name="), "  tracking.experiment_name: must not be empty"),
    "experiment name too long": (_set("tracking.experiment_name=" + "x" * 501),
                                 "  tracking.experiment_name: at most 500 characters (got 501)"),
    "registered model name": (_set("tracking.register_model=.."),
                              "  tracking.register_model: '..' is refused by the MLflow registry"),
    "reserved alias": (_set("tracking.model_alias=Latest"),
                       "  tracking.model_alias: 'Latest' is reserved by the MLflow registry"),
    "version alias": (_set("tracking.model_alias=V2"), "  tracking.model_alias: 'V2' is reserved by the MLflow registry"),
    "tag key MLflow refuses": (_set('experiment.tags={"a,b": "x"}'),
                               "  experiment.tags: tag key 'a,b' is refused by MLflow"),
    "reserved tag prefix": (_set('experiment.tags={"mlflow.note": "x"}'),
                            "  experiment.tags: tag key 'mlflow.note' uses a reserved prefix"),
    # output directories
    "checkpoints not writable": (_workdir_with_a_file_for_dot_mixvae,
                                 "  working directory: checkpoints cannot be written to "),
    "report dir not writable": (_report_dir_under_a_file, "  tracking.report_dir: reports cannot be written to "),
    "sqlite store not creatable": (_sqlite_store_under_a_file, "  tracking.uri: the sqlite store "),
    # data files
    "npz that is text": (_npz(lambda p: p.write_text("images,labels\n")),
                         "is not an npz file (a zip archive written by numpy.savez): it is a text file"),
    "npz that is random bytes": (_npz(lambda p: p.write_bytes(bytes(range(7, 256)))),
                                 "is not an npz file (a zip archive written by numpy.savez): its first bytes are"),
    "npy named npz": (_npz(lambda p: p.write_bytes(_npy_bytes(IMAGES))), "it holds one array written by numpy.save"),
    "truncated IDX": (_truncated_idx, "bytes of data, but its header announces 300 values"),
    "truncated gzipped IDX": (_truncated_idx_gz, "is a truncated gzip file: it ends before its end-of-stream marker"),
    "float labels": (_npz(lambda p: np.savez(p, images=IMAGES, labels=np.linspace(0, 9, 60))),
                     "key 'labels' must hold integers; found floating-point numbers (dtype float64)"),
    "text labels": (_npz(lambda p: np.savez(p, images=IMAGES, labels=np.array(["cat"] * 60))),
                    "key 'labels' must hold integers; found text (dtype <U3)"),
    "object labels": (_npz(lambda p: np.savez(p, images=IMAGES, labels=np.zeros(60, object))),
                      "key 'labels' holds Python objects (dtype object), which mixvae does not load"),
    "images of the wrong rank": (_npz(lambda p: np.savez(p, images=np.zeros((60, 64), np.uint8))),
                                 "key 'images' must have shape [N, H, W] or [N, H, W, Ch]; found shape [60, 64]"),
}


def _invoke(options: list[str], command: list[str], items: list[str]):
    args = list(options) + command
    for item in items:
        args += ["--set", item]
    return CliRunner().invoke(main, args)


def _run_leftovers() -> list[str]:
    """What a training run leaves in the working directory: its store, checkpoints and reports."""
    work = paths.work_dir()
    return sorted(name for name in ("mlflow.db", "mlruns", "reports") if (work / name).exists()) + (
        [".mixvae"] if (work / ".mixvae").is_dir() else [])


@pytest.mark.parametrize("case", list(CASES))
def test_validate_and_train_refuse_alike(case, tmp_path, monkeypatch):
    make, line = CASES[case]
    options, config, items, env = make(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    validated = _invoke(options, ["validate", config], items)
    assert validated.exit_code == 2, validated.output
    assert any(line in row for row in validated.stderr.splitlines()), validated.stderr
    assert "Traceback" not in validated.output
    trained = _invoke(options, ["train", "-c", config], items)
    assert trained.exit_code == 2, trained.output
    assert trained.stderr == validated.stderr  # the same message, line for line
    assert trained.stdout == "" and "Traceback" not in trained.output
    assert _run_leftovers() == []  # train stopped before a run existed


def test_the_data_problem_names_the_file(tmp_path):
    make, _ = CASES["float labels"]
    _, config, items, _ = make(tmp_path)
    result = _invoke([], ["validate", config], items)
    (problem,) = [row for row in result.stderr.splitlines() if "must hold integers" in row]
    assert problem.strip().startswith(f"data: {tmp_path / 'data.npz'} key 'labels'")


def test_a_workdir_that_cannot_be_made_is_a_usage_error_for_both(tmp_path):
    target = str(_a_file(tmp_path) / "work")
    for command in (["validate", "quick"], ["train", "-c", "quick"]):
        result = CliRunner().invoke(main, ["--workdir", target] + command)
        assert result.exit_code == 2, result.output
        assert f"--workdir {target}: {tmp_path / 'afile'} is not a directory" in result.output
        assert "Traceback" not in result.output


def test_the_train_console_script_refuses_like_validate(tmp_path):
    """The installed script, as users and MLproject call it: exit 2, the same line, no traceback."""
    script = VENV_BIN / "mixvae"
    if not script.exists():
        pytest.skip("the mixvae console script is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env["JAX_PLATFORMS"] = "cpu"
    path = write_npz(tmp_path / "labels.npz")
    np.savez(path, images=np.load(path)["images"], labels=np.full(200, 1.5))
    args = ["--set", "data.dataset=npz", "--set", f"data.path={path}"]
    outputs = []
    for command in (["validate", "quick"], ["train", "-c", "quick"]):
        done = subprocess.run([str(script), *command, *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        outputs.append(done.stderr)
    assert outputs[0] == outputs[1]
    assert f"data: {path} key 'labels' must hold integers; found floating-point numbers (dtype float64)" in outputs[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npz"]
