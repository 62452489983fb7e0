"""The configuration schema, overrides, flattening, hash, architecture code, presets and docs.

Every schema check (YAML, sections, unknown keys, types, ranges, enums) has a failing example whose
message is checked word for word. The cross-field rules are in test_config_rules.py; the data rules
belong to `mixvae.data` and are tested in test_data.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from config_helpers import load, problems

from mixvae.config import (
    ConfigError,
    architecture_code,
    config_from_dict,
    config_hash,
    defaults_flat,
    flat_values,
    flatten,
    flatten_dict,
    load_config,
    parse_overrides,
    resolved_conditioning,
    schema_keys,
    split_overrides,
    to_yaml,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
CONFIG_DOC = REPO / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    """The tracking rules look at the resolved tracking URI, which MLFLOW_TRACKING_URI would override."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# --- the schema (stage 1): YAML, sections, keys, types, ranges, enums -----------------------------


def test_yaml_syntax_error_reports_line_and_column(tmp_path):
    bad = tmp_path / "tabs.yaml"
    bad.write_text("model:\n  latent_dim: 2\n\tprior_type: mixture\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    (message,) = info.value.problems
    assert "YAML syntax error" in message
    assert "line 3, column 1" in message
    assert str(bad) in info.value.render()


def test_unknown_section_lists_the_six():
    (message,) = problems({"optim": {"lr": 0.1}})
    assert message == ("unknown section 'optim'; sections are experiment, data, model, training, "
                       "curriculum, tracking")


def test_close_section_name_is_suggested():
    (message,) = problems({"modle": {"latent_dim": 3}})
    assert "unknown section 'modle'" in message and "did you mean 'model'?" in message


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- data\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "top level must be a mapping" in info.value.problems[0]


def test_section_must_be_a_mapping():
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
def test_unknown_key_suggests_closest_match_or_section(raw, expected):
    assert problems(raw) == [expected]


def test_unknown_key_without_any_close_match_has_no_suggestion():
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
def test_wrong_type(section, key, value, expected):
    assert problems({section: {key: value}}) == [expected]


def test_int_accepts_integer_strings_and_float_accepts_numeric_strings():
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
def test_out_of_range(section, key, value, expected):
    assert problems({section: {key: value}}) == [expected]


def test_enum_lists_values_and_suggests_closest():
    (message,) = problems({"model": {"prior_type": "mixtures"}})
    assert message == ("model.prior_type must be one of standard, mixture, vamp, geometric_mog "
                       "(got 'mixtures'; did you mean 'mixture'?)")


def test_enum_without_close_value_has_no_suggestion():
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


# --- overrides -----------------------------------------------------------------------------------------


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


def test_flatten_dict_keeps_tags_whole():
    nested = {"experiment": {"name": "x", "tags": {"a": "1"}}, "model": {"hidden_dims": [8]},
              "curriculum": {"unlock": {"patience": 2}}}
    assert flatten_dict(nested) == {"experiment.name": "x", "experiment.tags": {"a": "1"},
                                    "model.hidden_dims": [8], "curriculum.unlock.patience": 2}
    assert flatten_dict({"patience": 2}, "training.") == {"training.patience": 2}


@pytest.mark.parametrize("prior, written, resolved", [
    ("mixture", "auto", "cin"), ("geometric_mog", "auto", "cin"), ("vamp", "auto", "none"),
    ("standard", "auto", "none"), ("mixture", "film", "film"), ("vamp", "none", "none"),
])
def test_decoder_conditioning_auto_is_resolved_in_one_place(prior, written, resolved):
    assert resolved_conditioning(prior, written) == resolved
    cfg = load({"model": {"prior_type": prior, "decoder_conditioning": written}}).config
    assert cfg.model.decoder_conditioning == resolved


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
    # the remaining parts of the code: Dirichlet, straight-through off, curriculum, head, FiLM, image σ
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
    assert text.startswith("#"), "each shipped config starts with a comment block"


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
    assert counts == {"Schema": 7, "Model": 20, "Data": 13, "Training": 5, "Curriculum": 9, "Tracking": 6}
