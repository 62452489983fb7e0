"""`mixvae validate` and `mixvae train --validate-only` through the real CLI: stages, exit codes, output.

Most cases run in-process through click's CliRunner; a few run the installed console script (and
`python -m mixvae`) as a subprocess, which is what users and MLproject call.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mixvae.cli import main
from mixvae.config import config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# The acceptance case: a misspelt model key, a bad enum value and a negative batch size in one file.
THREE_MISTAKES = """\
model:
  num_componets: 12
  latent_layout: sideways
training:
  batch_size: -8
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No ambient tracking URI; the variables `main` sets with setdefault are restored after each test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def stdout_lines(result) -> list[str]:
    return result.stdout.splitlines()


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env["JAX_PLATFORMS"] = "cpu"
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    return env


def mixvae_script() -> str:
    found = shutil.which("mixvae", path=subprocess_env()["PATH"])
    if found is None:
        pytest.skip("the mixvae console script is not installed")
    return found


# --- success -------------------------------------------------------------------------------------------


def test_validate_quick_prints_the_ok_block(monkeypatch):
    monkeypatch.chdir(REPO)
    result = invoke("validate", "configs/quick.yaml")
    assert result.exit_code == 0, result.stderr
    assert stdout_lines(result) == ["valid=true", "architecture=mix10-dec_unsup_cin"]
    err = result.stderr.splitlines()
    assert err[0] == "OK  configs/quick.yaml  (architecture mix10-dec_unsup_cin)"
    assert err[1] == "  data      digits 8x8x1 · train 1437 · val 180 · test 180 · labeled 0"
    assert re.fullmatch(r"  model     [\d,]+ trainable parameters · abstract train step: loss\.total f32\[\] · "
                        r"\d+ loss terms enabled", err[2]), err[2]
    assert err[3] == "  warnings  none"


def test_validate_console_script_subprocess():
    """The installed `mixvae` script, from the repository root; validation imports no mlflow."""
    proc = subprocess.run([mixvae_script(), "validate", "configs/quick.yaml"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["valid=true", "architecture=mix10-dec_unsup_cin"]
    assert proc.stderr.startswith("OK  configs/quick.yaml  (architecture mix10-dec_unsup_cin)")
    assert "warnings  none" in proc.stderr


def test_console_entry_skips_finalisation_and_keeps_exit_code_and_output(tmp_path):
    """The console entry leaves a finished command without the interpreter's finalisation (an object
    torn down there is never finalised), yet the exit code and all of stdout, buffered into a pipe, come
    through; MIXVAE_EXIT_FINALIZE=1 restores the usual ending."""
    code = ("import os, sys\n"
            "from mixvae import cli\n"
            "class Noisy:\n"
            "    def __del__(self, write=os.write):\n"
            "        write(2, b'finalised\\n')\n"
            "keep = Noisy()\n"
            "sys.argv = ['mixvae'] + sys.argv[1:]\n"
            "cli.run()\n")
    results = {}
    for finalize in ("0", "1"):
        env = {**subprocess_env(), "MIXVAE_EXIT_FINALIZE": finalize}
        ok = subprocess.run([sys.executable, "-c", code, "validate", "quick", "--print-config"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
        bad = subprocess.run([sys.executable, "-c", code, "validate", "quick", "--set", "model.num_components=-1",
                              "--set", "training.batch_size=0"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr
        assert bad.returncode == 2 and "2 problems" in bad.stderr, bad.stderr
        results[finalize] = (ok.stdout, "finalised" in ok.stderr, "finalised" in bad.stderr)
    assert results["0"][1:] == (False, False) and results["1"][1:] == (True, True)
    assert results["0"][0] == results["1"][0]
    printed = yaml.safe_load("\n".join(results["0"][0].splitlines()[2:]))
    assert printed["model"]["num_components"] == 10 and "training" in printed


def test_validation_path_does_not_import_mlflow_or_matplotlib(tmp_path):
    code = ("import sys\n"
            "from mixvae.cli import main\n"
            "main(['validate', 'quick'], standalone_mode=False)\n"
            "print('imported=' + ','.join(m for m in ('mlflow', 'matplotlib') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "imported="
    assert list(tmp_path.iterdir()) == []


def test_validate_applies_set_and_overrides(monkeypatch):
    monkeypatch.chdir(REPO)
    result = invoke("validate", "quick", "--set", "model.num_components=20",
                    "--overrides", "model.use_gumbel_softmax=false; ;model.latent_layout=shared",
                    "--print-config")
    assert result.exit_code == 0, result.stderr
    assert stdout_lines(result)[1] == "architecture=mix20_unsup_cin"
    printed = yaml.safe_load("\n".join(stdout_lines(result)[2:]))
    assert printed["model"]["num_components"] == 20
    assert printed["curriculum"]["k_active_max"] == 20  # derived from K after the override


def test_print_config_round_trips_to_the_same_resolved_config(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    result = invoke("validate", "configs/quick.yaml", "--print-config")
    assert result.exit_code == 0, result.stderr
    lines = stdout_lines(result)
    assert lines[:2] == ["valid=true", "architecture=mix10-dec_unsup_cin"]
    printed = yaml.safe_load("\n".join(lines[2:]))
    original = load_config("configs/quick.yaml").config
    assert config_from_dict(printed) == original
    # every key is there, derived ones resolved
    assert printed["model"]["decoder_conditioning"] == "cin"
    assert printed["model"]["component_embedding_dim"] == 16
    # and the printed YAML is itself a valid config that resolves to the same thing, without warnings
    copy = tmp_path / "quick.yaml"
    copy.write_text("\n".join(lines[2:]) + "\n")
    again = load_config(str(copy))
    assert again.config == original and again.warnings == []


# --- failure ---------------------------------------------------------------------------------------------


def test_three_mistakes_are_reported_in_one_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(THREE_MISTAKES)
    result = invoke("validate", "bad.yaml")
    assert result.exit_code == 2
    assert result.stdout == ""
    err = result.stderr
    assert err.splitlines()[0] == "bad.yaml: 3 problems"
    assert "model.num_componets: unknown key; did you mean 'model.num_components'?" in err
    assert "model.latent_layout must be one of shared, decentralized (got 'sideways')" in err
    assert "training.batch_size must be ≥ 1 (got -8)" in err
    assert "Traceback" not in err


def test_three_mistakes_subprocess_python_m(tmp_path):
    (tmp_path / "bad.yaml").write_text(THREE_MISTAKES)
    proc = subprocess.run([sys.executable, "-m", "mixvae", "validate", "bad.yaml"], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    for fragment in ("model.num_componets", "did you mean 'model.num_components'?", "model.latent_layout",
                     "'sideways'", "training.batch_size"):
        assert fragment in proc.stderr, fragment
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_strict_turns_a_warning_into_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("w.yaml").write_text("model:\n  c_regularizer: logit_mog\n  kl_c_weight: 0.5\n")
    plain = invoke("validate", "w.yaml")
    assert plain.exit_code == 0, plain.stderr
    assert "valid=true" in stdout_lines(plain)
    assert "  warnings  model.kl_c_weight has no effect: model.c_regularizer is 'logit_mog'" in plain.stderr
    strict = invoke("validate", "w.yaml", "--strict")
    assert strict.exit_code == 2
    assert "valid=true" not in strict.stdout
    assert "model.kl_c_weight has no effect" in strict.stderr


def test_bad_override_exits_2(monkeypatch):
    monkeypatch.chdir(REPO)
    result = invoke("validate", "quick", "--set", "model.K=4", "--set", "model.latent_dim")
    assert result.exit_code == 2
    assert "--set model.K: unknown key; did you mean 'model.num_components'?" in result.stderr
    assert "--set model.latent_dim: expected KEY=VALUE" in result.stderr


def test_missing_config_exits_2_and_lists_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("validate", "qick")
    assert result.exit_code == 2
    assert "config file not found: qick; shipped presets: " in result.stderr
    assert "quick" in result.stderr.split("shipped presets: ")[1]
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_exits_2_with_line_and_column(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tab.yaml").write_text("model:\n\tlatent_dim: 2\n")
    result = invoke("validate", "tab.yaml")
    assert result.exit_code == 2
    assert "line 2, column 1" in result.stderr


def test_mnist_without_files_exits_2_with_the_data_message(tmp_path, monkeypatch):
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("MIXVAE_DATA_DIR", str(empty))
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text("data:\n  dataset: mnist\n")
    result = invoke("validate", "m.yaml")
    assert result.exit_code == 2
    err = result.stderr
    assert "data: mnist files not found" in err
    assert f"looked in:  {empty / 'mnist'}" in err
    assert "train-images-idx3-ubyte.gz" in err and "mnist.npz" in err
    assert "fix:" in err and "data.path" in err and "data.download: true" in err
    assert "Traceback" not in err


# --- train --validate-only ----------------------------------------------------------------------------------


def test_train_validate_only_behaves_like_validate_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # empty: `quick` resolves to the installed presets
    validated = invoke("validate", "quick")
    trained = invoke("train", "--config", "quick", "--validate-only")
    assert validated.exit_code == trained.exit_code == 0, trained.stderr
    assert trained.stdout == validated.stdout
    assert stdout_lines(trained) == ["valid=true", "architecture=mix10-dec_unsup_cin"]
    assert trained.stderr.splitlines()[0] == validated.stderr.splitlines()[0]
    assert trained.stderr.splitlines()[0].startswith("OK  ")
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no mlruns, no reports


def test_train_validate_only_fails_like_validate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(THREE_MISTAKES)
    result = invoke("train", "-c", "bad.yaml", "--validate-only")
    assert result.exit_code == 2
    assert "did you mean 'model.num_components'?" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


# --- global behaviour ---------------------------------------------------------------------------------------


def test_unknown_command_suggests_the_closest():
    result = invoke("trian")
    assert result.exit_code == 2
    assert "No such command 'trian'" in result.output
    assert "Did you mean 'train'?" in result.output


def test_version_format():
    result = invoke("--version")
    assert result.exit_code == 0
    assert re.fullmatch(r"mixvae \S+ \(jax \S+, flax \S+, optax \S+, mlflow \S+\)\n", result.stdout), result.stdout


def test_file_tracking_uri_is_a_configuration_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("--tracking-uri", "file:./mlruns", "validate", "quick")
    assert result.exit_code == 2
    assert "file stores are not supported" in result.stderr and "sqlite:///" in result.stderr
    assert list(tmp_path.iterdir()) == []
