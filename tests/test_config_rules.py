"""The cross-field rules of a configuration (validation stage 2) and the "has no effect" warnings.

Every rule has a failing example whose message is checked for the key it names and the gist of
its wording.
"""

from __future__ import annotations

import json

import pytest
from config_helpers import load, problems, the_line, warnings_of

from mixvae.config import APPLIES, Config, schema_keys
from mixvae.config.applicability import classifier_head


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    """The tracking rules look at the resolved tracking URI, which MLFLOW_TRACKING_URI would override."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# --- keys set without effect: "has no effect" warnings and applicability -----------------------------


def test_explicit_non_default_key_without_effect_warns():
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
def test_a_default_value_explicitly_set_never_warns(raw):
    assert warnings_of(raw) == []


def test_bfloat16_decoder_on_the_cpu_warns():
    """On the CPU backend (where the suite runs) the bfloat16 decoder is slower than float32: a warning."""
    import jax
    if jax.default_backend() != "cpu":
        pytest.skip("the warning is for the CPU backend")
    assert warnings_of({"training": {"decode_dtype": "bfloat16"}}) == [
        "training.decode_dtype: bfloat16 on the CPU is slower than float32 there (XLA:CPU converts rather "
        "than computing in bfloat16; docs/performance.md); it pays on a GPU"]
    assert warnings_of({"training": {"decode_dtype": "float32"}}) == []


def test_resolved_value_that_differs_from_the_derived_default_warns():
    lines = warnings_of({"model": {"prior_type": "vamp", "latent_dim": 8, "component_embedding_dim": 4}})
    assert lines == ["model.component_embedding_dim has no effect: model.prior_type is 'vamp': no component logits"]


def test_keys_only_in_the_defaults_never_warn():
    # not explicitly set → no warning, whatever the configuration
    assert warnings_of({"model": {"prior_type": "standard", "decoder_conditioning": "none"}}) == []


def test_overrides_count_as_explicit():
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
def test_keys_without_effect_in_their_configuration_warn(raw, key):
    lines = warnings_of(raw)
    assert the_line(lines, key).startswith(f"{key} has no effect: ")


def test_keys_that_apply_do_not_warn():
    raw = {"model": {"c_regularizer": "both", "kl_c_weight": 0.5, "c_logit_prior_mean": 3.0,
                     "use_gumbel_softmax": True, "gumbel_temperature": 2.0,
                     "reconstruction_loss": "mse", "use_heteroscedastic_decoder": True, "sigma_min": 0.1,
                     "encoder_type": "conv", "conv_channels": [8, 16]},
           "data": {"num_labeled": 50}}
    assert warnings_of(raw) == []


# --- model rules -------------------------------------------------------------------------------------

MODEL_ERRORS = [
    ("decentralized-needs-component-decoding",
     {"model": {"prior_type": "standard", "decoder_conditioning": "none", "latent_layout": "decentralized"}},
     "model.latent_layout", "needs prior_type mixture or geometric_mog"),
    ("mixture-needs-two-components", {"model": {"num_components": 1}},
     "model.num_components", "use prior_type standard"),
    ("standard-has-no-embeddings", {"model": {"prior_type": "standard", "decoder_conditioning": "cin"}},
     "model.decoder_conditioning", "no component embeddings; use none"),
    ("vamp-has-no-embeddings", {"model": {"prior_type": "vamp", "decoder_conditioning": "film"}},
     "model.decoder_conditioning", "no component embeddings; use none"),
    ("gumbel-needs-component-decoding", {"model": {"prior_type": "vamp", "use_gumbel_softmax": True}},
     "model.use_gumbel_softmax", "routing only exists where components are decoded"),
    ("temperature-minimum-above-initial",
     {"model": {"use_gumbel_softmax": True, "gumbel_temperature": 0.5, "gumbel_temperature_min": 1.0}},
     "model.gumbel_temperature_min", "exceeds the initial one"),
    ("top-m-needs-component-decoding", {"model": {"prior_type": "vamp", "top_m_gating": 2}},
     "model.top_m_gating", "top-M gating needs per-component decoding"),
    ("top-m-above-k", {"model": {"top_m_gating": 11}},
     "model.top_m_gating", "M must be ≤ K"),
    ("logit-mog-needs-component-logits", {"model": {"prior_type": "vamp", "c_regularizer": "logit_mog"}},
     "model.c_regularizer", "logit-MoG prior needs encoder component logits"),
    ("tau-needs-mixture",
     {"model": {"prior_type": "standard", "decoder_conditioning": "none", "use_tau_classifier": True},
      "data": {"num_labeled": 100}},
     "model.use_tau_classifier", "τ needs a mixture-based prior"),
    ("tau-needs-k-at-least-c",
     {"model": {"num_components": 5, "use_tau_classifier": True}, "data": {"num_labeled": 100}},
     "model.use_tau_classifier", "τ needs K ≥ C"),
    ("tau-needs-labels", {"model": {"use_tau_classifier": True}},
     "model.use_tau_classifier", "τ needs labeled training images"),
    ("pi-fixed-for-vamp", {"model": {"prior_type": "vamp", "decoder_conditioning": "none", "learnable_pi": True}},
     "model.learnable_pi", "π is fixed"),
    ("dirichlet-needs-learnable-pi", {"model": {"dirichlet_alpha": 2.0}},
     "model.dirichlet_alpha", "only acts on a learnable π"),
    ("heteroscedastic-needs-mse", {"model": {"use_heteroscedastic_decoder": True}},
     "model.use_heteroscedastic_decoder", "heteroscedastic output is Gaussian; use reconstruction_loss: mse"),
    ("empty-sigma-bounds", {"model": {"sigma_min": 0.5, "sigma_max": 0.5}},
     "model.sigma_max", "σ bounds are empty"),
    ("grid-needs-square-k",
     {"model": {"prior_type": "geometric_mog", "geometric_arrangement": "grid", "num_components": 10}},
     "model.geometric_arrangement", "nearest squares 9, 16"),
    ("geometric-needs-two-dims", {"model": {"prior_type": "geometric_mog", "latent_dim": 1}},
     "model.latent_dim", "centres need two dimensions"),
]


@pytest.mark.parametrize("case, raw, key, gist", MODEL_ERRORS, ids=[c[0] for c in MODEL_ERRORS])
def test_model_rule_errors(case, raw, key, gist):
    line = the_line(problems(raw), key)
    assert gist in line, line


MODEL_WARNINGS = [
    ("identical-decoders", {"model": {"decoder_conditioning": "none"}},
     "model.decoder_conditioning", "all components decode identically"),
    ("positive-diversity-weight", {"model": {"component_diversity_weight": 0.1}},
     "model.component_diversity_weight", "favours collapse"),
    ("straight-through-without-gumbel", {"model": {"use_straight_through_gumbel": False}},
     "model.use_straight_through_gumbel", "has no effect: model.use_gumbel_softmax is false"),
    ("temperature-without-gumbel", {"model": {"gumbel_temperature": 2.0}},
     "model.gumbel_temperature", "has no effect: model.use_gumbel_softmax is false"),
    ("anneal-without-gumbel", {"model": {"gumbel_temperature_anneal_epochs": 10}},
     "model.gumbel_temperature_anneal_epochs", "has no effect: model.use_gumbel_softmax is false"),
]


@pytest.mark.parametrize("case, raw, key, gist", MODEL_WARNINGS, ids=[c[0] for c in MODEL_WARNINGS])
def test_model_rule_warnings(case, raw, key, gist):
    loaded = load(raw)
    line = the_line(loaded.warnings, key)
    assert gist in line, line


def test_square_grid_is_accepted():
    cfg = load({"model": {"prior_type": "geometric_mog", "geometric_arrangement": "grid",
                          "num_components": 9}}).config
    assert cfg.model.num_components == 9


# --- the early-stopping monitor ----------------------------------------------------------------------


def test_monitor_must_be_an_enabled_val_key_and_lists_them():
    line = the_line(problems({"training": {"monitor": "val/tau.accuracy"}}), "training.monitor")
    assert "'val/tau.accuracy'" in line
    assert "val/loss.total" in line and "val/loss.recon" in line  # the enabled keys are listed


def test_train_keys_are_not_monitors():
    line = the_line(problems({"training": {"monitor": "train/loss.total"}}), "training.monitor")
    assert "not a per-epoch validation key" in line


def test_monitor_mode_against_the_direction_warns():
    line = the_line(warnings_of({"training": {"monitor_mode": "max"}}), "training.monitor_mode")
    assert "contradicts" in line and "val/loss.total" in line


# --- curriculum rules --------------------------------------------------------------------------------

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


CURRICULUM_ERRORS = [
    ("needs-component-logits",
     with_curriculum(model={"prior_type": "vamp", "decoder_conditioning": "none", "use_gumbel_softmax": False}),
     "curriculum.enabled", "masks component logits"),
    ("k-active-max-below-init", with_curriculum(curriculum={"k_active_init": 5, "k_active_max": 3}),
     "curriculum.k_active_max", "(got 5, 3, 10)"),
    ("k-active-max-above-k", with_curriculum(curriculum={"k_active_max": 12}),
     "curriculum.k_active_max", "(got 1, 12, 10)"),
    ("unlock-monitor-not-a-loss", with_curriculum(curriculum={"unlock": {"monitor": "val/clustering.acc"}}),
     "curriculum.unlock.monitor", "val/loss.recon"),
    ("kick-temperature-without-gumbel",
     with_curriculum(model={"use_gumbel_softmax": False}, curriculum={"kick": {"gumbel_temperature": 5.0}}),
     "curriculum.kick.gumbel_temperature", "nothing to act on"),
    ("kick-straight-through-without-it",
     with_curriculum(model={"use_straight_through_gumbel": False},
                     curriculum={"kick": {"disable_straight_through": True}}),
     "curriculum.kick.disable_straight_through", "nothing to act on"),
    ("no-warm-start", with_curriculum(model={"cluster_init": "kmeans"}),
     "model.cluster_init", "curriculum starts with few of them open"),
]


@pytest.mark.parametrize("case, raw, key, gist", CURRICULUM_ERRORS, ids=[c[0] for c in CURRICULUM_ERRORS])
def test_curriculum_rule_errors(case, raw, key, gist):
    line = the_line(problems(raw), key)
    assert gist in line, line


CURRICULUM_WARNINGS = [
    ("negative-diversity-weight", with_curriculum(model={"component_diversity_weight": -0.1}),
     "model.component_diversity_weight", "works against the curriculum"),
    ("patience-too-short", with_curriculum(training={"patience": 8}),
     "training.patience", "unlock.patience + kick.epochs"),
    ("monitor-total-loss", with_curriculum(training={"monitor": "val/loss.total"}),
     "training.monitor", "monitor val/loss.recon"),
    ("settings-without-curriculum", {"curriculum": {"k_active_init": 2}},
     "curriculum.k_active_init", "has no effect: curriculum.enabled is false"),
    ("nested-settings-without-curriculum", {"curriculum": {"unlock": {"patience": 9}}},
     "curriculum.unlock.patience", "has no effect: curriculum.enabled is false"),
]


@pytest.mark.parametrize("case, raw, key, gist", CURRICULUM_WARNINGS, ids=[c[0] for c in CURRICULUM_WARNINGS])
def test_curriculum_rule_warnings(case, raw, key, gist):
    line = the_line(warnings_of(raw), key)
    assert gist in line, line


# --- tracking rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["file:./mlruns", "file:///tmp/mlruns", "./mlruns", "/tmp/mlruns"])
def test_file_stores_are_rejected(uri):
    line = the_line(problems({"tracking": {"uri": uri}}), "tracking.uri")
    assert "file stores are not supported" in line and "sqlite:///" in line


@pytest.mark.parametrize("uri", ["sqlite:///tmp/mlflow.db", "http://127.0.0.1:5000", "https://mlflow.example",
                                 "postgresql://user@host/db", "databricks"])
def test_database_and_server_uris_are_accepted(uri):
    assert load({"tracking": {"uri": uri}}).config.tracking.uri == uri


def test_the_uri_check_applies_to_the_resolved_uri(monkeypatch):
    line = the_line(problems({}, tracking_uri="file:./mlruns"), "--tracking-uri")
    assert "file stores are not supported" in line
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")
    line = the_line(problems({}), "MLFLOW_TRACKING_URI")
    assert "file stores are not supported" in line
    # the command line beats the environment and the file
    assert load({"tracking": {"uri": "file:x"}}, tracking_uri="sqlite:///ok.db").warnings == []


@pytest.mark.parametrize("alias", ["latest", "v3", "v10"])
def test_reserved_aliases(alias):
    line = the_line(problems({"tracking": {"model_alias": alias}}), "tracking.model_alias")
    assert "reserved by the MLflow registry" in line


def test_ordinary_alias_is_fine():
    assert load({"tracking": {"model_alias": "champion"}}).config.tracking.model_alias == "champion"


@pytest.mark.parametrize("tags", [{"mlflow.user": "x"}, ["mixvae.kind"]])
def test_reserved_tag_prefixes(tags):
    line = the_line(problems({"experiment": {"tags": tags}}), "experiment.tags")
    assert "reserved prefix" in line


def test_tags_from_a_list_become_true():
    cfg = load({"experiment": {"tags": ["baseline", "paper"]}}).config
    assert cfg.experiment.tags == {"baseline": "true", "paper": "true"}


@pytest.mark.parametrize("model", [{}, {"use_tau_classifier": True, "num_components": 12}, {"label_weight": 0}])
@pytest.mark.parametrize("num_labeled", [0, 50])
def test_the_head_is_trained_exactly_when_its_condition_holds(model, num_labeled):
    cfg = Config.model_validate({"model": model})
    assert cfg.model.head_trained(num_labeled) == (classifier_head(cfg, num_labeled) is None)
