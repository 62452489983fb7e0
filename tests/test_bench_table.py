"""bench/table.py (the table `make bench` ends with), `run_all.py --table`, and bench/common.py's
reading of a `mixvae -v train` process (phases in each form, one real short run)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MACHINE = "CPU: test, 2 cores"


def load_bench(name: str, monkeypatch):
    """A bench module loaded by path; the environment it sets on import is restored after the test."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def line(bench, config, metric, value, unit, target=None, reference=None):
    return {"bench": bench, "config": config, "metric": metric, "value": value, "unit": unit,
            "target": target, "limit": None, "reference": reference, "machine": MACHINE}


IMAGE = "dense: quick.yaml, σ per image, batch 128; train 1293, 20 epochs × 10 steps"
LINES = [
    line("dense", IMAGE, "step_time", 24.5, "ms/step", "reported", 32.0),
    line("dense", IMAGE, "epoch_time", 0.31, "s/epoch", "<= 0.26", 0.71),
    line("dense", IMAGE.replace("image", "pixel"), "step_time", 40.0, "ms/step", "<= 45"),
    line("validate_time", "quick", "validate_wall_time", 1.2, "s", "<= 3"),
    line("validate_time", "mnist_conv (generated 300+60-image IDX fixture)", "validate_wall_time", 2.0, "s", "<= 3"),
    line("compile_count", "curriculum, 6 epochs (events: kick×1)", "compilations.epoch", 1, "count", "== 1"),
    line("compile_count", "curriculum, 6 epochs (events: kick×1)", "compilations.evaluate", 2, "count", "== 1"),
    line("throughput", "mnist_conv model on canvas npz (pool 600), top_m_gating 2 (top-2)", "compile_time", 5.0, "s"),
    line("throughput", "mnist_conv model on canvas npz (pool 600), top_m_gating 0 (all 10 decoded)",
         "compile_time", 7.0, "s"),
    line("quick_e2e", "quick", "e2e_wall_time", None, "s", "<= 60"),
]


def rows_by_name(module, lines, ran=None) -> dict[str, list[str]]:
    return {row[0]: row for row in module.table_rows(lines, ran)}


def test_named_rows_show_ours_reference_target_and_whether_met(monkeypatch):
    table = load_bench("table", monkeypatch)
    rows = rows_by_name(table, LINES, ran={"dense": 0, "quick_e2e": 1, "heavy": 1})
    assert rows["dense: time per training step, σ per image"][1:] == ["24.5 ms/step", "32.0 ms/step", "reported",
                                                                      "–"]
    assert rows["dense: time per epoch"][1:] == ["0.31 s/epoch", "0.71 s/epoch", "≤ 0.26 s/epoch", "not met"]
    assert rows["dense, σ per pixel: time per training step"][1:] == ["40.0 ms/step", "–", "≤ 45 ms/step", "met"]
    # measured by a script that ran but printed no line for it; by one that was not run at all
    assert rows["dense: 20 epochs end to end, report and model included"][1] == "no result (exit 0)"
    assert rows["conv, all 20 decoded: time per epoch"][1:] == ["no result (exit 1)", "289 s/epoch",
                                                                "≤ 96 s/epoch", "no result"]
    assert rows["quick.yaml: MLflow writer overhead"][1] == "not run"
    assert rows["GPU, conv MNIST size K = 20, top-2: time per epoch"][1] == "not run (--gpu)"
    assert rows["quick.yaml end to end"][1:] == ["failed", "–", "≤ 60 s", "failed"]


def test_several_lines_of_one_row_and_the_other_lines_are_told_apart(monkeypatch):
    table = load_bench("table", monkeypatch)
    rows = rows_by_name(table, LINES)
    assert rows["validate time · quick"][1] == "1.20 s"
    assert rows["validate time · mnist_conv"][1] == "2.00 s"
    assert rows["compile count · compilations.epoch"][4] == "met"
    assert rows["compile count · compilations.evaluate"][4] == "not met"
    # lines no named row takes: a row each, told apart by the part of their config that differs
    assert rows["throughput · top_m_gating 2 · compile_time"][1] == "5.00 s"
    assert rows["throughput · top_m_gating 0 · compile_time"][1] == "7.00 s"
    every = table.table_rows(LINES)
    # 8 lines fill 6 named rows (two of them with 2 lines each), the others stay empty; 2 lines of their own
    assert len(every) == (len(table.ROWS) - 6) + 8 + 2
    names = [r[0] for r in every]
    assert len(names) == len(set(names))
    assert [r[0] for r in every[:6]] == [
        "dense: time per training step, σ per image", "dense: time per epoch",
        "dense: 20 epochs end to end, report and model included",
        "dense: the same, first run of the config (empty compilation cache)",
        "dense: the same, a later run in the same directory (the store exists)",
        "dense, σ per pixel: time per training step"]


def test_the_table_is_aligned_and_names_the_machine(monkeypatch):
    table = load_bench("table", monkeypatch)
    text = table.render(LINES).splitlines()
    assert text[0].split("|")[1].strip() == "measurement"
    assert set(text[1]) == {"|", "-"}
    widths = {len(t) for t in text[:-1]}
    assert len(widths) == 1, widths
    assert text[-1] == f"machine: {MACHINE}"


def test_every_row_names_a_script_run_all_runs(monkeypatch):
    table = load_bench("table", monkeypatch)
    run_all = load_bench("run_all", monkeypatch)
    scripts = {name for name, _, _ in run_all.BENCHES}
    assert {row.script for row in table.ROWS} <= scripts
    assert len({row.name for row in table.ROWS}) == len(table.ROWS)
    assert table.reference("dense: time per epoch") == 0.71
    with pytest.raises(KeyError):
        table.reference("no such row")


def test_run_all_table_reprints_saved_lines_and_runs_nothing(tmp_path):
    saved = tmp_path / "results.jsonl"
    # a saved stdout: JSON lines, a progress line, and the table a run printed after them
    saved.write_text("\n".join([*(json.dumps(x, ensure_ascii=False) for x in LINES), "# run_all: done",
                                "", "| measurement | ours |", "{not json"]) + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run_all.py"), "--table", str(saved)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith("| measurement")
    assert any(r.startswith("| dense: time per epoch ") and "not met" in r for r in out)
    assert any(r.startswith("| quick.yaml: MLflow writer overhead ") and "not run" in r for r in out)
    assert "# run_all" not in proc.stderr  # nothing was run


def test_phases_are_read_from_the_json_line_a_pairs_line_or_the_table(monkeypatch):
    common = load_bench("common", monkeypatch)
    from mixvae.console import phase_table

    phases = {"startup": 1.5, "data": 0.25, "compile": 3.0, "epochs": 10.0}
    as_json = "noise\nphases " + json.dumps(phases) + "\nmore\n"
    assert common.parse_phases(as_json) == phases
    assert common.parse_phases("phases: data=0.25 compile=3\n") == {"data": 0.25, "compile": 3.0}
    as_table = "\n".join(["epoch 3 …", *("  " + t for t in phase_table(phases, 20.0)), "run_id=abc"])
    assert common.parse_phases(as_table) == phases
    assert common.parse_phases("nothing here\n") == {}


def test_a_short_training_process_is_timed_with_its_phases(monkeypatch, tmp_path):
    common = load_bench("common", monkeypatch)
    results = common.Results("test", machine_name=MACHINE)
    run = common.train_process(common.CONFIGS / "quick.yaml", ["training.max_epochs=1"], tmp_path)
    assert run["code"] == 0, run["tail"]
    assert {"data", "compile", "epochs", "report", "model"} <= set(run["phases"])
    assert 0 < sum(run["phases"].values()) < run["wall"]
    assert run["metrics"]["training.epochs_completed"] == 1
    assert common.emit_train_process(results, "quick", run, "<= 60", None, wall_reference=50.0)
    first = results.lines[0]
    assert (first["metric"], first["reference"], first["value"]) == ("e2e_wall_time", 50.0, round(run["wall"], 4))
    assert {ln["metric"] for ln in results.lines} >= {"phase.epochs", "phase.rest", "process_peak_rss"}
