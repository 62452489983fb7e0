"""bench/quality.py: seed groups next to baselines on the same splits, written into a results file.

The end-to-end test runs the script twice in a subprocess inside tmp_path (its temporary MLflow store,
the JAX compilation cache and the output file all live there); the others test its pieces in-process.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "quality.py"
NUMBER = r"\d+\.\d+( ± \d+\.\d+)?"


def load_bench(name: str, monkeypatch):
    """A bench module loaded by path; the environment it sets on import is restored after the test."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section(markdown: str, title: str) -> str:
    return markdown.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


@pytest.fixture
def bench_env(subprocess_env, tmp_path):
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("MLFLOW_")}
    (tmp_path / "tmp").mkdir()
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'env-store.db'}", TMPDIR=str(tmp_path / "tmp"),
               MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env


def quality(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_quality_writes_a_section_per_preset_and_keeps_the_others(bench_env, tmp_path):
    repo_results = (REPO / "docs" / "results.md").exists()
    out = tmp_path / "results.md"
    earlier = "# Quality results\n\nintro of an earlier run\n\n## earlier\n\nkept as it was\n"
    out.write_text(earlier)
    first = quality(["quick", "--seeds", "0-1", "--set", "training.max_epochs=2", "--out", str(out)], bench_env,
                    tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"seed 0: FINISHED ACC \d\.\d{3}", first.stderr) and "seed 1: FINISHED" in first.stderr
    text = out.read_text()
    assert text.startswith(earlier) and section(text, "earlier").strip() == "kept as it was"  # the other one kept
    assert text.index("\n## earlier\n") < text.index("\n## quick\n")                   # the new one after it
    quick = section(text, "quick")
    assert "--seeds 0-1" in quick and "Machine: " in quick and "JAX backend cpu" in quick
    mixvae = row(quick, "mixvae `quick`")
    assert mixvae[1] == "2" and all(re.fullmatch(NUMBER, c) for c in mixvae[2:4])   # n, ACC, NMI
    for label in ("k-means, pixels", "GMM diagonal, pixels", "PCA 50 + GMM full", "t-SNE + k-means"):
        baseline = row(quick, label)
        assert baseline[1] == "2" and all(re.fullmatch(NUMBER, c) for c in baseline[2:5]), baseline
    assert row(quick, "k-means, pixels")[-2] == "–"                 # loss.recon: not a baseline metric
    assert "logistic regression" not in quick                        # quick has no labels
    assert row(quick, "0 |")[2] == "FINISHED" and row(quick, "1 |")[2] == "FINISHED"  # the per-seed table
    assert first.stdout.startswith("## quick\n")
    assert (REPO / "docs" / "results.md").exists() == repo_results     # nothing written into the repository


def test_bad_preset_exits_2_with_the_shipped_names(bench_env, tmp_path):
    proc = quality(["no_such_preset", "--out", str(tmp_path / "r.md")], bench_env, tmp_path)
    assert proc.returncode == 2
    assert "no_such_preset" in proc.stderr and "quick" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.md").exists()


def test_replace_section_keeps_the_text_above_and_the_other_sections(tmp_path, monkeypatch):
    common = load_bench("common", monkeypatch)
    path = tmp_path / "results.md"
    common.replace_section(path, "a", "first a", intro="# Title\n\nintro")
    common.replace_section(path, "b", "b body\n\n```\n## not a heading\n```")
    path.write_text(path.read_text() + "\nnotes under b\n")
    common.replace_section(path, "a", "second a")
    text = path.read_text()
    assert text.startswith("# Title\n\nintro\n\n## a\n\nsecond a\n\n## b\n")
    assert "first a" not in text and "## not a heading" in text and text.endswith("notes under b\n")
    assert text.count("## a\n") == 1


def test_labelled_baselines_use_the_labelled_images_of_the_split(monkeypatch):
    quality_module = load_bench("quality", monkeypatch)
    from mixvae.config import load_config
    from mixvae.data import load_dataset

    ds = load_dataset(load_config("tau_semisupervised").config)
    assert ds.n_labeled == 100 and np.count_nonzero(ds.train_y >= 0) == 100
    # the unlabelled baselines are checked end to end above; these two are the ones that use labels
    result = quality_module.baselines(ds, 10, seed=0, kinds=("logreg", "k-means 50"))
    assert set(result) == {"logistic regression, 100 labels", "k-means 50 + majority vote, 100 labels"}
    assert all(0.5 < m["clustering.acc"] <= 1 for m in result.values())  # far above chance on digits
    assert set(result["logistic regression, 100 labels"]) == {"clustering.acc", "wall", "kind"}
