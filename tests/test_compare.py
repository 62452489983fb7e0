"""COMPARE.md / COMPARE.html (runs, differing config keys, metric deltas, seed groups, curves) on
realistic synthetic runs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.image import imread

from report_fixtures import record

from mixvae.report import build_compare, default_compare_dir

IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def section(markdown: str, title: str) -> str:
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[1:]]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """mixture_gumbel (baseline), conditioning_none, and a second seed of mixture_gumbel."""
    runs = [record("mixture_gumbel"), record("conditioning_none"), record("mixture_gumbel", seed=1)]
    out = tmp_path_factory.mktemp("compare")
    path = build_compare(runs, out)
    return runs, path, path.read_text(encoding="utf-8")


def test_compare_names_every_run_and_marks_the_baseline(compared):
    runs, path, md = compared
    assert path.name == "COMPARE.md"
    titles = ("Runs", "Parameter differences", "Metrics", "Seed groups", "Curves")
    positions = [md.index(f"\n## {t}\n") for t in titles]
    assert positions == sorted(positions)
    table = rows(section(md, "Runs"))
    assert [r[0] for r in table] == [f"`{runs[0].run_id}` (baseline)", f"`{runs[1].run_id}`", f"`{runs[2].run_id}`"]
    assert [r[1] for r in table] == [r.run_name for r in runs]
    assert [r[6] for r in table] == ["0", "0", "1"]                  # training.seed
    assert [r[7] for r in table] == ["14", "29", "14"]               # best epoch
    assert "Warning" not in section(md, "Runs")                      # same data, same accuracy method


def test_parameter_differences_list_only_keys_that_differ(compared):
    _, _, md = compared
    table = {r[0].strip("`"): r[1:] for r in rows(section(md, "Parameter differences"))}
    assert table["model.decoder_conditioning"] == ['"cin"', '"none"', '"cin"']
    assert table["model.latent_layout"] == ['"decentralized"', '"shared"', '"decentralized"']
    assert table["training.seed"] == ["0", "0", "1"]
    assert "model.num_components" not in table                        # equal in every run
    assert not any(k.startswith("tracking.") for k in table)


def test_metric_deltas_are_marked_by_direction(compared):
    runs, _, md = compared
    table = {r[0]: r[1:] for r in rows(section(md, "Metrics"))}
    base, other = runs[0].metrics, runs[1].metrics
    total = table["loss.total"]
    assert total[0] == f"{base['loss.total']:.4g}" and total[1] == f"{other['loss.total']:.4g}"
    delta = other["loss.total"] - base["loss.total"]
    assert delta < 0
    assert total[3] == f"{delta:+.4g} ({100 * delta / base['loss.total']:+.1f} %) ▲"   # lower loss is better
    assert total[4].startswith("+0") and "▲" not in total[4] and "▼" not in total[4]
    assert "clustering.acc (hungarian)" in table
    assert table["clustering.acc (hungarian)"][3] == "—"               # missing in the unlabeled run


def test_worse_values_get_a_down_marker_and_metric_selection_works(tmp_path):
    a, b = record("standard"), record("standard", seed=3)
    a.metrics.update({"loss.recon": 30.0, "latent.active_units": 4.0})
    b.metrics.update({"loss.recon": 33.0, "latent.active_units": 4.0})
    md = build_compare([a, b], tmp_path, metrics=["loss.recon", "latent.active_units"], html=False).read_text()
    table = {r[0]: r[1:] for r in rows(section(md, "Metrics"))}
    assert list(table) == ["loss.recon", "latent.active_units"]
    assert table["loss.recon"] == ["30", "33", "+3 (+10.0 %) ▼"]
    assert table["latent.active_units"][2] == "+0 (+0.0 %)"
    assert not (tmp_path / "COMPARE.html").exists()


def test_baseline_can_be_chosen_by_prefix(tmp_path):
    a, b = record("standard"), record("standard", seed=3)
    md = build_compare([a, b], tmp_path, baseline=b.run_id[:8], html=False).read_text()
    assert f"`{b.run_id}` (baseline)" in md
    with pytest.raises(ValueError, match="matches 0"):
        build_compare([a, b], tmp_path, baseline="ffffffffffff")


def test_warnings_for_different_data_and_accuracy_methods(tmp_path):
    a, b = record("mixture_gumbel"), record("tau")
    b.summary["data"]["digest"] = "99999999"
    md = build_compare([a, b], tmp_path, html=False).read_text()
    runs_part = section(md, "Runs")
    assert "metrics use different data" in runs_part
    assert "clustering.acc is computed with different methods" in runs_part
    assert "clustering.acc (hungarian / purity)" in section(md, "Metrics")


def test_seed_groups_show_mean_and_sample_std(compared):
    runs, _, md = compared
    seeds = section(md, "Seed groups")
    assert runs[0].tags["mixvae.config_hash_noseed"] in seeds
    assert runs[1].run_name not in seeds                              # a group of one is not shown
    values = [runs[0].metrics["mixture.K_eff"], runs[2].metrics["mixture.K_eff"]]
    table = {r[0]: r[1:] for r in rows(seeds)}
    assert table["mixture.K_eff"] == [f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.4g}", "2"]


def seed_table(seeds_section: str) -> list[list[str]]:
    """The per-seed table of a seed group: the first table of its section, header row included."""
    block = seeds_section.split("\n\n| seed |", 1)[1].split("\n\n", 1)[0]
    lines = ("| seed |" + block).splitlines()
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines if not line.startswith("|-")]


def test_seed_groups_have_a_per_seed_table_with_a_mean_row(compared):
    runs, _, md = compared
    header, *body = seed_table(section(md, "Seed groups"))
    assert header == ["seed", "run id", "status", "clustering.acc (hungarian)", "clustering.nmi", "mixture.K_eff",
                      "latent.active_units", "loss.recon"]          # no tau.accuracy: not logged
    members = [runs[0], runs[2]]
    assert [row[:3] for row in body[:2]] == [[str(s), f"`{r.run_id}`", r.status] for s, r in zip((0, 1), members)]
    acc = [r.metrics["clustering.acc"] for r in members]
    assert body[0][3] == f"{acc[0]:.4g}" and body[1][3] == f"{acc[1]:.4g}"
    assert body[2][0] == "mean ± std"
    assert body[2][3] == f"{np.mean(acc):.4g} ± {np.std(acc, ddof=1):.4g}"


def test_per_seed_table_shows_tau_accuracy_where_logged(tmp_path):
    md = build_compare([record("tau"), record("tau", seed=1)], tmp_path, html=False).read_text()
    header, *body = seed_table(section(md, "Seed groups"))
    assert header[-1] == "tau.accuracy" and len(body) == 3 and body[-1][0] == "mean ± std"


def test_no_seed_group_without_a_shared_hash(tmp_path):
    md = build_compare([record("standard"), record("tau")], tmp_path, html=False).read_text()
    assert "No seed groups" in section(md, "Seed groups")


def test_curves_are_drawn_linked_and_embedded(compared):
    _, path, md = compared
    links = IMAGE_LINK.findall(md)
    assert links == ["compare_figures/val_loss_total.png", "compare_figures/val_loss_recon.png",
                     "compare_figures/val_mixture_K_eff.png", "compare_figures/val_clustering_acc.png"]
    for link in links:
        pixels = imread(path.parent / link)
        assert (pixels != pixels[0, 0]).any()
    page = (path.parent / "COMPARE.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(links) and all(s.startswith("data:image/png;base64,") for s in sources)


def test_fewer_than_two_distinct_runs_is_an_error(tmp_path):
    one = record("standard")
    with pytest.raises(ValueError, match="at least two runs"):
        build_compare([one, one], tmp_path)


def test_default_compare_dir_is_a_hash_of_the_sorted_ids():
    path = default_compare_dir(["b" * 32, "a" * 32])
    assert re.fullmatch(r"reports/compare-[0-9a-f]{8}", path)
    assert path == default_compare_dir(["a" * 32, "b" * 32]) == default_compare_dir(["a" * 32, "b" * 32, "a" * 32])
    assert path != default_compare_dir(["a" * 32, "c" * 32])
