"""The configuration schema and its rules (SPEC §3, §12.2 architecture codes, §13 config rows, §14).

Every numbered rule that `mixvae.config` owns (G1–G7, M1–M20, T1–T2, C1–C8, K1–K3) has a failing
example whose message is checked for the key it names and the gist of the SPEC message. The data
rules D1–D11 belong to `mixvae.data` and are tested there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from mixvae.config import (
    APPLIES,
    Config,
    ConfigError,
    architecture_code,
    config_from_dict,
    config_hash,
    defaults_flat,
    flat_values,
    flatten,
    load_config,
    parse_overrides,
    schema_keys,
    split_overrides,
    to_yaml,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
CONFIG_DOC = REPO / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    """K1 looks at the resolved tracking URI, which MLFLOW_TRACKING_URI would override."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def load(raw: dict, overrides=(), **kw):
    """Stages 1–2 of a config given as a dict (as if read from `t.yaml`)."""
    return load_config("t.yaml", list(overrides), raw=raw, **kw)


def problems(raw: dict, overrides=(), **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(raw, overrides, **kw)
    return info.value.problems


def warnings_of(raw: dict, overrides=(), **kw) -> list[str]:
    return load(raw, overrides, **kw).warnings


def the_line(lines: list[str], key: str) -> str:
    """The one message line that names `key`."""
    hits = [line for line in lines if line.startswith(key)]
    assert len(hits) == 1, f"expected exactly one message for {key}, got {lines}"
    return hits[0]


# --- G rules: schema (stage 1) ---------------------------------------------------------------------


def test_g1_yaml_syntax_error_reports_line_and_column(tmp_path):
    bad = tmp_path / "tabs.yaml"
    bad.write_text("model:\n  latent_dim: 2\n\tprior_type: mixture\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    (message,) = info.value.problems
    assert "YAML syntax error" in message
    assert "line 3, column 1" in message
    assert str(bad) in info.value.render()


def test_g2_unknown_section_lists_the_six():
    (message,) = problems({"optim": {"lr": 0.1}})
    assert message == ("unknown section 'optim'; sections are experiment, data, model, training, "
                       "curriculum, tracking")


def test_g2_close_section_name_is_suggested():
    (message,) = problems({"modle": {"latent_dim": 3}})
    assert "unknown section 'modle'" in message and "did you mean 'model'?" in message


def test_g2_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- data\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "top level must be a mapping" in info.value.problems[0]


def test_g2_section_must_be_a_mapping():
    (message,) = problems({"model": 3})
    assert message.startswith("model:") and "section must be a mapping" in message


@pytest.mark.parametrize("raw, expected", [
    ({"model": {"num_component": 3}}, "model.num_component: unknown key; did you mean 'model.num_components'?"),
    ({"curriculum": {"unlock": {"patiense": 3}}},
     "curriculum.unlock.patiense: unknown key; did you mean 'curriculum.unlock.patience'?"),
    ({"model": {"patience": 3}}, "model.patience: unknown key; 'patience' belongs to section 'training'"),
    ({"training": {"num_components": 3}},
     "training.num_components: unknown key; 'num_components' belongs to section 'model'"),
])
def test_g3_unknown_key_suggests_closest_match_or_section(raw, expected):
    assert problems(raw) == [expected]


def test_g3_unknown_key_without_any_close_match_has_no_suggestion():
    (message,) = problems({"model": {"zzzzzz": 1}})
    assert message == "model.zzzzzz: unknown key"


@pytest.mark.parametrize("section, key, value, expected", [
    ("model", "latent_dim", "two", "model.latent_dim: expected an integer, got 'two'"),
    ("model", "latent_dim", 3.5, "model.latent_dim: expected an integer, got 3.5"),
    ("model", "latent_dim", True, "model.latent_dim: expected an integer, got true"),
    ("model", "kl_weight", "heavy", "model.kl_weight: expected a number, got 'heavy'"),
    ("model", "kl_weight", float("inf"), "model.kl_weight: expected a finite number, got inf"),
    ("data", "download", "yes", "data.download: expected true or false, got 'yes'"),
    ("data", "stratify", 1, "data.stratify: expected true or false, got 1"),
    ("model", "hidden_dims", "wide", "model.hidden_dims: expected a list, got 'wide'"),
    ("training", "monitor", 3, "training.monitor: expected a string, got 3"),
])
def test_g4_wrong_type(section, key, value, expected):
    assert problems({section: {key: value}}) == [expected]


def test_g4_int_accepts_integer_strings_and_float_accepts_numeric_strings():
    cfg = load({"model": {"latent_dim": "3"}, "training": {"learning_rate": "1e-3"}}).config
    assert cfg.model.latent_dim == 3 and isinstance(cfg.model.latent_dim, int)
    assert cfg.training.learning_rate == pytest.approx(1e-3)
    # what PyYAML gives for `learning_rate: 1e-3` is a string; the file form must work as well
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"


@pytest.mark.parametrize("section, key, value, expected", [
    ("model", "latent_dim", 0, "model.latent_dim must be ≥ 1 (got 0)"),
    ("model", "latent_dim", 513, "model.latent_dim must be ≤ 512 (got 513)"),
    ("model", "kl_weight", -1, "model.kl_weight must be ≥ 0 (got -1)"),
    ("data", "val_fraction", 0, "data.val_fraction must be > 0 (got 0)"),
    ("model", "dropout_rate", 1.0, "model.dropout_rate must be < 1 (got 1.0)"),
    ("model", "hidden_dims", [], "model.hidden_dims must have at least 1 entry (got [])"),
    ("model", "hidden_dims", [64, 5000], "model.hidden_dims: each width must be 1–4096 (got 5000)"),
    ("data", "scale", 0, "data.scale: must be 'auto' or a number > 0 (got 0)"),
])
def test_g5_out_of_range(section, key, value, expected):
    assert problems({section: {key: value}}) == [expected]


def test_g6_enum_lists_values_and_suggests_closest():
    (message,) = problems({"model": {"prior_type": "mixtures"}})
    assert message == ("model.prior_type must be one of standard, mixture, vamp, geometric_mog "
                       "(got 'mixtures'; did you mean 'mixture'?)")


def test_g6_enum_without_close_value_has_no_suggestion():
    (message,) = problems({"model": {"latent_layout": "sideways"}})
    assert message == "model.latent_layout must be one of shared, decentralized (got 'sideways')"


def test_all_field_errors_of_a_file_come_in_one_config_error():
    with pytest.raises(ConfigError) as info:
        load({"model": {"num_componets": 12, "latent_layout": "sideways", "latent_dim": "two"},
              "training": {"batch_size": -4}, "optim": {}})
    err = info.value
    assert len(err.problems) == 5
    for fragment in ("model.num_componets", "model.latent_layout", "model.latent_dim", "training.batch_size",
                     "unknown section 'optim'"):
        assert any(fragment in p for p in err.problems), fragment
    rendered = err.render().splitlines()
    assert rendered[0] == "t.yaml: 5 problems"
    assert all(line.startswith("  ") for line in rendered[1:])


def test_all_cross_field_errors_come_together_after_field_checks_pass():
    raw = {"model": {"prior_type": "standard", "latent_layout": "decentralized",
                     "use_heteroscedastic_decoder": True, "sigma_min": 0.5, "sigma_max": 0.1}}
    lines = problems(raw)
    assert {line.split(":")[0] for line in lines} >= {
        "model.latent_layout", "model.use_heteroscedastic_decoder", "model.sigma_max"}
    # a field error stops before the cross-field rules: only the field problem is reported
    raw["model"]["latent_dim"] = 0
    assert problems(raw) == ["model.latent_dim must be ≥ 1 (got 0)"]


# --- G7 and applicability ----------------------------------------------------------------------------


def test_g7_explicit_non_default_key_without_effect_warns():
    assert warnings_of({"model": {"c_regularizer": "logit_mog", "kl_c_weight": 0.5}}) == [
        "model.kl_c_weight has no effect: model.c_regularizer is 'logit_mog'"]


@pytest.mark.parametrize("raw", [
    {"model": {"c_regularizer": "logit_mog", "kl_c_weight": 1.0}},   # the default, explicitly
    {"model": {"c_regularizer": "logit_mog", "kl_c_weight": 1}},     # the default as an int
    {"model": {"c_regularizer": "logit_mog", "kl_c_weight": "1.0"}},  # the default as a string
    {"model": {"prior_type": "vamp", "latent_dim": 8, "component_embedding_dim": None,
               "decoder_conditioning": "auto"}},                     # derived defaults as written
    {"model": {"prior_type": "vamp", "decoder_conditioning": "none", "latent_dim": 8,
               "component_embedding_dim": 8}},                       # what the defaults resolve to
    {"curriculum": {"k_active_init": 1, "k_active_max": None, "kick": {"epochs": 3}}},
])
def test_g7_a_default_value_explicitly_set_never_warns(raw):
    assert warnings_of(raw) == []


def test_g7_resolved_value_that_differs_from_the_derived_default_warns():
    lines = warnings_of({"model": {"prior_type": "vamp", "latent_dim": 8, "component_embedding_dim": 4}})
    assert lines == ["model.component_embedding_dim has no effect: model.prior_type is 'vamp': no component logits"]


def test_g7_keys_only_in_the_defaults_never_warn():
    # not explicitly set → no warning, whatever the configuration
    assert warnings_of({"model": {"prior_type": "standard", "decoder_conditioning": "none"}}) == []


def test_g7_counts_overrides_as_explicit():
    lines = warnings_of({}, ["model.vamp_num_samples_kl=4"])
    assert lines == ["model.vamp_num_samples_kl has no effect: model.prior_type is 'mixture'"]


def test_applies_has_a_predicate_for_every_schema_key():
    assert set(APPLIES) == set(schema_keys())
    default = Config()
    for key, predicate in APPLIES.items():
        result = predicate(default, default.data.num_labeled)
        assert result is None or isinstance(result, str), key


@pytest.mark.parametrize("raw, key", [
    ({"model": {"c_regularizer": "categorical", "c_logit_prior_mean": 3.0}}, "model.c_logit_prior_mean"),
    ({"model": {"sigma_min": 0.1}}, "model.sigma_min"),
    ({"model": {"vamp_pseudo_lr_scale": 0.5}}, "model.vamp_pseudo_lr_scale"),
    ({"model": {"geometric_radius": 3.0}}, "model.geometric_radius"),
    ({"model": {"tau_count_decay": 0.5}}, "model.tau_count_decay"),
    ({"model": {"dropout_rate": 0.5}}, "model.dropout_rate"),
    ({"model": {"conv_channels": [8, 16]}}, "model.conv_channels"),
    ({"model": {"prior_type": "standard", "decoder_conditioning": "none", "num_components": 5}},
     "model.num_components"),
    ({"model": {"dirichlet_weight": 2.0}}, "model.dirichlet_weight"),
    ({"model": {"kl_weight": 0, "kl_warmup_epochs": 5}}, "model.kl_warmup_epochs"),
    ({"data": {"dataset": "mnist", "test_fraction": 0.2}}, "data.test_fraction"),
    ({"data": {"download": True}}, "data.download"),
    ({"curriculum": {"enabled": True, "kick": {"enabled": False, "epochs": 4}},
      "model": {"use_gumbel_softmax": True}, "training": {"monitor": "val/loss.recon", "patience": 30}},
     "curriculum.kick.epochs"),
])
def test_g7_applicability_examples_of_spec_3_8_1(raw, key):
    lines = warnings_of(raw)
    assert the_line(lines, key).startswith(f"{key} has no effect: ")


def test_g7_keys_that_apply_do_not_warn():
    raw = {"model": {"c_regularizer": "both", "kl_c_weight": 0.5, "c_logit_prior_mean": 3.0,
                     "use_gumbel_softmax": True, "gumbel_temperature": 2.0,
                     "reconstruction_loss": "mse", "use_heteroscedastic_decoder": True, "sigma_min": 0.1,
                     "encoder_type": "conv", "conv_channels": [8, 16]},
           "data": {"num_labeled": 50}}
    assert warnings_of(raw) == []


# --- M rules -----------------------------------------------------------------------------------------

M_ERRORS = [
    ("M1", {"model": {"prior_type": "standard", "decoder_conditioning": "none", "latent_layout": "decentralized"}},
     "model.latent_layout", "needs prior_type mixture or geometric_mog"),
    ("M2", {"model": {"num_components": 1}}, "model.num_components", "use prior_type standard"),
    ("M3", {"model": {"prior_type": "standard", "decoder_conditioning": "cin"}},
     "model.decoder_conditioning", "no component embeddings; use none"),
    ("M3-vamp", {"model": {"prior_type": "vamp", "decoder_conditioning": "film"}},
     "model.decoder_conditioning", "no component embeddings; use none"),
    ("M4", {"model": {"prior_type": "vamp", "use_gumbel_softmax": True}},
     "model.use_gumbel_softmax", "routing only exists where components are decoded"),
    ("M5", {"model": {"use_gumbel_softmax": True, "gumbel_temperature": 0.5, "gumbel_temperature_min": 1.0}},
     "model.gumbel_temperature_min", "exceeds the initial one"),
    ("M6", {"model": {"prior_type": "vamp", "top_m_gating": 2}},
     "model.top_m_gating", "top-M gating needs per-component decoding"),
    ("M7", {"model": {"top_m_gating": 11}}, "model.top_m_gating", "M must be ≤ K"),
    ("M8", {"model": {"prior_type": "vamp", "c_regularizer": "logit_mog"}},
     "model.c_regularizer", "logit-MoG prior needs encoder component logits"),
    ("M9", {"model": {"prior_type": "standard", "decoder_conditioning": "none", "use_tau_classifier": True},
            "data": {"num_labeled": 100}},
     "model.use_tau_classifier", "τ needs a mixture-based prior"),
    ("M10", {"model": {"num_components": 5, "use_tau_classifier": True}, "data": {"num_labeled": 100}},
     "model.use_tau_classifier", "τ needs K ≥ C"),
    ("M11", {"model": {"use_tau_classifier": True}}, "model.use_tau_classifier", "τ needs labeled training images"),
    ("M12", {"model": {"prior_type": "vamp", "decoder_conditioning": "none", "learnable_pi": True}},
     "model.learnable_pi", "π is fixed"),
    ("M13", {"model": {"dirichlet_alpha": 2.0}}, "model.dirichlet_alpha", "only acts on a learnable π"),
    ("M14", {"model": {"use_heteroscedastic_decoder": True}},
     "model.use_heteroscedastic_decoder", "heteroscedastic output is Gaussian; use reconstruction_loss: mse"),
    ("M15", {"model": {"sigma_min": 0.5, "sigma_max": 0.5}}, "model.sigma_max", "σ bounds are empty"),
    ("M16", {"model": {"prior_type": "geometric_mog", "geometric_arrangement": "grid", "num_components": 10}},
     "model.geometric_arrangement", "nearest squares 9, 16"),
    ("M17", {"model": {"prior_type": "geometric_mog", "latent_dim": 1}},
     "model.latent_dim", "centres need two dimensions"),
]


@pytest.mark.parametrize("rule, raw, key, gist", M_ERRORS, ids=[c[0] for c in M_ERRORS])
def test_m_rule_errors(rule, raw, key, gist):
    line = the_line(problems(raw), key)
    assert gist in line, line


M_WARNINGS = [
    ("M18", {"model": {"decoder_conditioning": "none"}}, "model.decoder_conditioning",
     "all components decode identically"),
    ("M19", {"model": {"component_diversity_weight": 0.1}}, "model.component_diversity_weight",
     "favours collapse"),
    ("M20-st", {"model": {"use_straight_through_gumbel": False}}, "model.use_straight_through_gumbel",
     "has no effect: model.use_gumbel_softmax is false"),
    ("M20-temperature", {"model": {"gumbel_temperature": 2.0}}, "model.gumbel_temperature",
     "has no effect: model.use_gumbel_softmax is false"),
    ("M20-anneal", {"model": {"gumbel_temperature_anneal_epochs": 10}}, "model.gumbel_temperature_anneal_epochs",
     "has no effect: model.use_gumbel_softmax is false"),
]


@pytest.mark.parametrize("rule, raw, key, gist", M_WARNINGS, ids=[c[0] for c in M_WARNINGS])
def test_m_rule_warnings(rule, raw, key, gist):
    loaded = load(raw)
    line = the_line(loaded.warnings, key)
    assert gist in line, line


def test_m16_square_grid_is_accepted():
    cfg = load({"model": {"prior_type": "geometric_mog", "geometric_arrangement": "grid",
                          "num_components": 9}}).config
    assert cfg.model.num_components == 9


# --- T rules -----------------------------------------------------------------------------------------


def test_t1_monitor_must_be_an_enabled_val_key_and_lists_them():
    line = the_line(problems({"training": {"monitor": "val/tau.accuracy"}}), "training.monitor")
    assert "'val/tau.accuracy'" in line
    assert "val/loss.total" in line and "val/loss.recon" in line  # the enabled keys are listed


def test_t1_train_keys_are_not_monitors():
    line = the_line(problems({"training": {"monitor": "train/loss.total"}}), "training.monitor")
    assert "not a per-epoch validation key" in line


def test_t2_monitor_mode_against_the_direction_warns():
    line = the_line(warnings_of({"training": {"monitor_mode": "max"}}), "training.monitor_mode")
    assert "contradicts" in line and "val/loss.total" in line


# --- C rules -----------------------------------------------------------------------------------------

CURRICULUM_OK = {"curriculum": {"enabled": True}, "model": {"use_gumbel_softmax": True},
                 "training": {"monitor": "val/loss.recon", "patience": 30}}


def with_curriculum(**sections) -> dict:
    raw = json.loads(json.dumps(CURRICULUM_OK))
    for name, body in sections.items():
        for key, value in body.items():
            if isinstance(value, dict):
                raw.setdefault(name, {}).setdefault(key, {}).update(value)
            else:
                raw.setdefault(name, {})[key] = value
    return raw


def test_curriculum_baseline_is_clean():
    assert warnings_of(CURRICULUM_OK) == []


C_ERRORS = [
    ("C1", with_curriculum(model={"prior_type": "vamp", "decoder_conditioning": "none",
                                  "use_gumbel_softmax": False}),
     "curriculum.enabled", "masks component logits"),
    ("C2", with_curriculum(curriculum={"k_active_init": 5, "k_active_max": 3}),
     "curriculum.k_active_max", "(got 5, 3, 10)"),
    ("C2-above-K", with_curriculum(curriculum={"k_active_max": 12}), "curriculum.k_active_max", "(got 1, 12, 10)"),
    ("C3", with_curriculum(curriculum={"unlock": {"monitor": "val/clustering.acc"}}),
     "curriculum.unlock.monitor", "val/loss.recon"),
    ("C4-temperature", with_curriculum(model={"use_gumbel_softmax": False},
                                       curriculum={"kick": {"gumbel_temperature": 5.0}}),
     "curriculum.kick.gumbel_temperature", "nothing to act on"),
    ("C4-straight-through", with_curriculum(model={"use_straight_through_gumbel": False},
                                            curriculum={"kick": {"disable_straight_through": True}}),
     "curriculum.kick.disable_straight_through", "nothing to act on"),
    ("C5b-warm-start", with_curriculum(model={"cluster_init": "kmeans"}), "model.cluster_init",
     "curriculum starts with few of them open"),
]


@pytest.mark.parametrize("rule, raw, key, gist", C_ERRORS, ids=[c[0] for c in C_ERRORS])
def test_c_rule_errors(rule, raw, key, gist):
    line = the_line(problems(raw), key)
    assert gist in line, line


C_WARNINGS = [
    ("C5", with_curriculum(model={"component_diversity_weight": -0.1}), "model.component_diversity_weight",
     "works against the curriculum"),
    ("C6", with_curriculum(training={"patience": 8}), "training.patience", "unlock.patience + kick.epochs"),
    ("C7", with_curriculum(training={"monitor": "val/loss.total"}), "training.monitor", "monitor val/loss.recon"),
    ("C8", {"curriculum": {"k_active_init": 2}}, "curriculum.k_active_init",
     "has no effect: curriculum.enabled is false"),
    ("C8-nested", {"curriculum": {"unlock": {"patience": 9}}}, "curriculum.unlock.patience",
     "has no effect: curriculum.enabled is false"),
]


@pytest.mark.parametrize("rule, raw, key, gist", C_WARNINGS, ids=[c[0] for c in C_WARNINGS])
def test_c_rule_warnings(rule, raw, key, gist):
    line = the_line(warnings_of(raw), key)
    assert gist in line, line


# --- K rules -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["file:./mlruns", "file:///tmp/mlruns", "./mlruns", "/tmp/mlruns"])
def test_k1_file_stores_are_rejected(uri):
    line = the_line(problems({"tracking": {"uri": uri}}), "tracking.uri")
    assert "file stores are not supported" in line and "sqlite:///" in line


@pytest.mark.parametrize("uri", ["sqlite:///tmp/mlflow.db", "http://127.0.0.1:5000", "https://mlflow.example",
                                 "postgresql://user@host/db", "databricks"])
def test_k1_database_and_server_uris_are_accepted(uri):
    assert load({"tracking": {"uri": uri}}).config.tracking.uri == uri


def test_k1_applies_to_the_resolved_uri(monkeypatch):
    line = the_line(problems({}, tracking_uri="file:./mlruns"), "--tracking-uri")
    assert "file stores are not supported" in line
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")
    line = the_line(problems({}), "MLFLOW_TRACKING_URI")
    assert "file stores are not supported" in line
    # the command line beats the environment and the file (SPEC §12.1)
    assert load({"tracking": {"uri": "file:x"}}, tracking_uri="sqlite:///ok.db").warnings == []


@pytest.mark.parametrize("alias", ["latest", "v3", "v10"])
def test_k2_reserved_aliases(alias):
    line = the_line(problems({"tracking": {"model_alias": alias}}), "tracking.model_alias")
    assert "reserved by the MLflow registry" in line


def test_k2_ordinary_alias_is_fine():
    assert load({"tracking": {"model_alias": "champion"}}).config.tracking.model_alias == "champion"


@pytest.mark.parametrize("tags", [{"mlflow.user": "x"}, ["mixvae.kind"]])
def test_k3_reserved_tag_prefixes(tags):
    line = the_line(problems({"experiment": {"tags": tags}}), "experiment.tags")
    assert "reserved prefix" in line


def test_tags_from_a_list_become_true():
    cfg = load({"experiment": {"tags": ["baseline", "paper"]}}).config
    assert cfg.experiment.tags == {"baseline": "true", "paper": "true"}


# --- overrides (SPEC §3.9) -----------------------------------------------------------------------------


def test_overrides_are_typed_like_yaml():
    cfg = load({}, ["model.hidden_dims=[128, 64]", "model.dirichlet_alpha=null", "model.learnable_pi=true",
                    "training.learning_rate=1e-3", "model.geometric_arrangement=grid",
                    "model.num_components=16", "model.prior_type=geometric_mog"]).config
    assert cfg.model.hidden_dims == [128, 64]
    assert cfg.model.dirichlet_alpha is None
    assert cfg.model.learnable_pi is True
    assert cfg.training.learning_rate == pytest.approx(0.001)
    assert cfg.model.geometric_arrangement == "grid"
    assert cfg.model.num_components == 16


def test_parse_overrides_keeps_the_text_as_typed():
    assert parse_overrides([" model.latent_dim = 4 ", "data.scale=auto"]) == [
        ("model.latent_dim", 4, "model.latent_dim = 4"), ("data.scale", "auto", "data.scale=auto")]


def test_overrides_apply_in_order_after_the_file_and_count_as_explicit():
    loaded = load({"model": {"latent_dim": 3}}, ["model.latent_dim=4", "model.latent_dim=5"])
    assert loaded.config.model.latent_dim == 5
    assert "model.latent_dim" in loaded.explicit
    assert loaded.overrides == ["model.latent_dim=4", "model.latent_dim=5"]


def test_shortcuts_win_over_overrides():
    loaded = load({}, ["tracking.run_name=a"], shortcuts={"tracking.run_name": "b"})
    assert loaded.config.tracking.run_name == "b"


@pytest.mark.parametrize("item, expected", [
    ("curriculum={enabled: true}",
     "--set curriculum: curriculum is a section; set its keys, e.g. curriculum.enabled=true"),
    ("model.latent_dim", "--set model.latent_dim: expected KEY=VALUE"),
    ("model.K=4", "--set model.K: unknown key; did you mean 'model.num_components'?"),
    ("model.num_component=4", "--set model.num_component: unknown key; did you mean 'model.num_components'?"),
    ("model.patience=4", "--set model.patience: unknown key; 'patience' belongs to section 'training'"),
])
def test_bad_overrides(item, expected):
    with pytest.raises(ConfigError) as info:
        parse_overrides([item])
    assert info.value.problems == [expected]


def test_a_subsection_cannot_be_set_as_a_whole():
    with pytest.raises(ConfigError) as info:
        parse_overrides(["curriculum.kick={epochs: 4}"])
    (message,) = info.value.problems
    assert "curriculum.kick is a section; set its keys, e.g. curriculum.kick." in message


def test_all_bad_overrides_are_reported_together():
    with pytest.raises(ConfigError) as info:
        parse_overrides(["model.latent_dim", "model.K=4", "model.latent_dim=2"])
    assert len(info.value.problems) == 2


def test_override_values_are_validated_like_the_file():
    assert problems({}, ["model.latent_dim=two"]) == ["model.latent_dim: expected an integer, got 'two'"]


def test_split_overrides_on_semicolons():
    assert split_overrides("a.b=1; c.d=x") == ["a.b=1", "c.d=x"]
    assert split_overrides(" a.b=1 ;; ; c.d=[1, 2] ;") == ["a.b=1", "c.d=[1, 2]"]
    assert split_overrides("") == []
    assert split_overrides(None) == []


# --- flattening, hash, architecture code ------------------------------------------------------------


def test_flatten_gives_dotted_keys_and_json_values():
    cfg = load({"experiment": {"description": "d", "tags": ["x"]}, "tracking": {"run_name": "r"}}).config
    params = flatten(cfg)
    assert all("." in key for key in params)
    assert "experiment.description" not in params and "experiment.tags" not in params
    assert not any(key.startswith("tracking.") for key in params)
    assert params["experiment.name"] == '"t"'
    assert params["model.hidden_dims"] == "[256, 128, 64]"
    assert params["model.dirichlet_alpha"] == "null"
    assert params["data.stratify"] == "true"
    assert params["training.learning_rate"] == "0.001"
    assert params["curriculum.unlock.patience"] == "5"
    assert params["model.decoder_conditioning"] == '"cin"'  # resolved, never auto
    for text in params.values():
        json.loads(text)
    expected = {k for k in schema_keys()
                if k not in ("experiment.description", "experiment.tags") and not k.startswith("tracking.")}
    assert set(params) == expected


def test_config_hash_ignores_experiment_and_tracking():
    base = load({}).config
    h = config_hash(base)
    assert re.fullmatch(r"[0-9a-f]{12}", h)
    other = load({"experiment": {"name": "other", "description": "x", "tags": ["t"]},
                  "tracking": {"run_name": "r", "experiment_name": "e", "report": False}}).config
    assert config_hash(other) == h
    assert config_hash(load({"model": {"latent_dim": 3}}).config) != h


def test_config_hash_noseed_groups_seed_repeats():
    a = load({"training": {"seed": 0}}).config
    b = load({"training": {"seed": 7}}).config
    assert config_hash(a) != config_hash(b)
    assert config_hash(a, with_seed=False) == config_hash(b, with_seed=False)
    assert config_hash(a, with_seed=False) != config_hash(load({"data": {"seed": 7}}).config, with_seed=False)


ARCHITECTURES = [
    ("std_unsup_plain", {"model": {"prior_type": "standard"}}),
    ("mix10_unsup_cin", {}),
    ("mix10-dec-gbl_unsup_cin", {"model": {"latent_layout": "decentralized", "use_gumbel_softmax": True}}),
    ("mix20-dec-gbl_tau_cin", {"model": {"num_components": 20, "latent_layout": "decentralized",
                                         "use_gumbel_softmax": True, "use_tau_classifier": True},
                               "data": {"num_labeled": 100}}),
    ("mix10-dec-gbl-top2_unsup_cin-conv", {"model": {"latent_layout": "decentralized", "use_gumbel_softmax": True,
                                                     "top_m_gating": 2, "decoder_type": "conv"}}),
    ("geo9-grid_unsup_cin-het", {"model": {"prior_type": "geometric_mog", "num_components": 9,
                                           "geometric_arrangement": "grid", "reconstruction_loss": "mse",
                                           "use_heteroscedastic_decoder": True}}),
    ("vamp50-km_unsup_plain", {"model": {"prior_type": "vamp", "num_components": 50,
                                         "vamp_pseudo_init_method": "kmeans"}}),
    # the other parts of §12.2
    ("mix10-dir-gbls-cur_head_film-heti", {
        "model": {"learnable_pi": True, "dirichlet_alpha": 2.0, "use_gumbel_softmax": True,
                  "use_straight_through_gumbel": False, "decoder_conditioning": "film",
                  "reconstruction_loss": "mse", "use_heteroscedastic_decoder": True, "sigma_granularity": "image"},
        "data": {"num_labeled": 50},
        "curriculum": {"enabled": True}, "training": {"monitor": "val/loss.recon", "patience": 30}}),
    ("geo10-circle_unsup_cat-mse", {"model": {"prior_type": "geometric_mog", "decoder_conditioning": "concat",
                                              "reconstruction_loss": "mse"}}),
    ("vamp10-rand_unsup_plain", {"model": {"prior_type": "vamp"}}),
    ("mix10_unsup_cin", {"model": {"top_m_gating": 10}}),  # M = K decodes everything: no -top
]


@pytest.mark.parametrize("code, raw", ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_architecture_code(code, raw):
    assert architecture_code(load(raw).config) == code


# --- resolution, defaults, round trip ------------------------------------------------------------------


def test_derived_values_are_resolved():
    cfg = load({"model": {"latent_dim": 6, "num_components": 12}}).config
    assert cfg.model.decoder_conditioning == "cin"
    assert cfg.model.component_embedding_dim == 6
    assert cfg.curriculum.k_active_max == 12
    assert cfg.experiment.name == "t"
    assert cfg.data.scale == "auto"
    std = load({"model": {"prior_type": "standard"}}).config
    assert std.model.decoder_conditioning == "none"


def test_defaults_flat_covers_the_schema_and_keeps_derived_values_unresolved():
    d = defaults_flat()
    assert list(d) == schema_keys()
    assert d["model.decoder_conditioning"] == "auto"
    assert d["model.component_embedding_dim"] is None
    assert d["curriculum.k_active_max"] is None
    assert d["model.hidden_dims"] == [256, 128, 64]
    assert d["training.max_epochs"] == 200 and d["training.patience"] == 20


def test_to_yaml_round_trips_to_the_same_config():
    loaded = load_config(str(CONFIGS / "quick.yaml"))
    text = to_yaml(loaded.config)
    assert config_from_dict(yaml.safe_load(text)) == loaded.config
    assert "auto" not in yaml.safe_load(text)["model"]["decoder_conditioning"]


# --- files: shipped configs, presets, missing files ----------------------------------------------------

SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def test_there_are_shipped_configs():
    names = {p.stem for p in SHIPPED}
    assert {"quick", "default"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_loads_with_zero_warnings(path):
    loaded = load_config(str(path))
    assert loaded.warnings == []
    assert loaded.config.experiment.name == path.stem
    text = path.read_text()
    assert text.startswith("#"), "each shipped config starts with a comment block (SPEC §14)"


def test_default_yaml_writes_every_key_at_its_default():
    raw = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    written = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and k != "tags":
                walk(v, f"{prefix}{k}.")
            else:
                written[f"{prefix}{k}"] = v

    walk(raw)
    assert written == defaults_flat()
    loaded = load_config(str(CONFIGS / "default.yaml"))
    assert architecture_code(loaded.config) == "mix10_unsup_cin"
    assert loaded.config.model.decoder_conditioning == "cin"


def test_default_yaml_has_a_comment_for_every_key():
    for line in (CONFIGS / "default.yaml").read_text().splitlines():
        if re.match(r"\s*\w+:\s*\S", line):  # a key with a value on the line
            assert "#" in line, f"no comment: {line!r}"


@pytest.mark.parametrize("name", ["quick", "quick.yaml"])
def test_presets_resolve_by_bare_name(name, tmp_path, monkeypatch):
    expected = load_config(str(CONFIGS / "quick.yaml")).config
    assert load_config(name).config == expected  # from the repository root
    monkeypatch.chdir(tmp_path)                   # elsewhere: the installed copy
    loaded = load_config(name)
    assert loaded.config == expected
    assert Path(loaded.path).name == "quick.yaml"


def test_missing_config_file_lists_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError) as info:
        load_config("configs/qick.yaml")
    (message,) = info.value.problems
    assert message.startswith("config file not found: configs/qick.yaml; shipped presets: ")
    listed = message.split("shipped presets: ")[1].split(", ")
    assert set(listed) >= {p.stem for p in SHIPPED}


def test_loaded_knows_where_the_config_came_from(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  latent_dim: 3\n")
    loaded = load_config(str(path), ["training.seed=2"])
    assert loaded.path == str(path)
    assert loaded.input_text == path.read_text()
    assert loaded.explicit == {"model.latent_dim", "training.seed"}
    assert loaded.config.experiment.name == "mine"
    assert flat_values(loaded.config)["training.seed"] == 2


def test_empty_file_is_all_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    loaded = load_config(str(path))
    assert loaded.warnings == [] and loaded.explicit == set()
    assert architecture_code(loaded.config) == "mix10_unsup_cin"


# --- docs/configuration.md stays in step with the schema --------------------------------------------


def render_default(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value)


def doc_reference_rows() -> dict[str, list[str]]:
    """key → cells of every row of the reference tables (header `| key | type | default | …`)."""
    rows: dict[str, list[str]] = {}
    in_table = False
    for line in CONFIG_DOC.read_text().splitlines():
        if line.startswith("| key | type | default |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if in_table and not line.startswith("|---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            key = cells[0].strip("`")
            assert key not in rows, f"{key} documented twice"
            rows[key] = cells
    return rows


def test_config_doc_documents_exactly_the_schema_keys():
    rows = doc_reference_rows()
    assert set(rows) == set(schema_keys())


def test_config_doc_defaults_match_the_schema():
    rows = doc_reference_rows()
    defaults = defaults_flat()
    for key, cells in rows.items():
        assert len(cells) == 5, key
        shown = re.match(r"`([^`]*)`", cells[2])
        assert shown, f"{key}: the default cell must start with a code span"
        assert shown.group(1) == render_default(defaults[key]), key


def doc_rule_rows() -> dict[str, list[str]]:
    """Stage → (condition, kind) rows of the rule tables (header `| condition | kind |`, after a `Stage:` line)."""
    rows: dict[str, list[str]] = {}
    stage, in_table = None, False
    for line in CONFIG_DOC.read_text().splitlines():
        if line.endswith(":") and not line.startswith("|"):
            stage = line[:-1]
        elif line.startswith("| condition | kind |"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and not line.startswith("|---"):
            condition, kind = (c.strip() for c in line.strip()[1:-1].rsplit("|", 1))
            assert kind in ("E", "W"), line
            rows.setdefault(stage, []).append(condition)
    return rows


def test_config_doc_lists_every_rule():
    counts = {stage: len(conditions) for stage, conditions in doc_rule_rows().items()}
    assert counts == {"Schema": 7, "Model": 20, "Data": 11, "Training": 2, "Curriculum": 9, "Tracking": 3}
