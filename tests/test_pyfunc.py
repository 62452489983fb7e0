"""The logged pyfunc model: import hygiene, log → register → load by alias →
predict, and serving with `mlflow models serve`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, mlflow_executable, stop_process, wait_for_http

PYFUNC_FILE = Path(__file__).resolve().parents[1] / "mixvae" / "tracking" / "pyfunc_model.py"
IMAGE_SHAPE = (8, 8, 1)

_IMPORT_PROBE = """
import importlib.util, json, sys
import mlflow, mlflow.pyfunc, jax, flax.nnx, numpy, pandas, yaml   # what MLflow and the model need anyway
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("code_model_probe", sys.argv[1])  # as MLflow loads it
module = importlib.util.module_from_spec(spec)
sys.modules["code_model_probe"] = module
spec.loader.exec_module(module)
import mixvae.tracking.pyfunc_model                                  # and as a package module
added = set(sys.modules) - before
print(json.dumps({
    "added_forbidden": sorted(m for m in added
                              if m.split(".")[0] in ("click", "matplotlib", "seaborn", "sklearn")),
    "loaded_forbidden": sorted(m for m in ("matplotlib", "seaborn", "sklearn") if m in sys.modules),
    "mixvae": sorted(m for m in added if m.startswith("mixvae")),
    "model_set": type(mlflow.models.model.__mlflow_model__).__name__,
}))
"""


def test_model_file_imports_no_cli_or_plotting_packages(subprocess_env):
    out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, str(PYFUNC_FILE)], capture_output=True,
                         text=True, env=subprocess_env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["added_forbidden"] == []  # click is imported by mlflow itself, never by mixvae
    assert found["loaded_forbidden"] == []
    assert not [m for m in found["mixvae"] if m.startswith(("mixvae.cli", "mixvae.report", "mixvae.train"))]
    assert found["model_set"] == "MixvaeModel"


# ---------------------------------------------------------------------------------------------
# A tiny untrained model


def _tiny_model(tmp_path: Path, **model_overrides):
    """Config, saved weights, data_meta and the in-process predictions for two images."""
    import jax.numpy as jnp
    from flax import nnx

    from mixvae.config import Config, to_yaml
    from mixvae.model import MixVAE, predict_arrays, save_weights
    from mixvae.tracking.model_logging import make_data_meta

    model_cfg = {"num_components": 3, "num_classes": 4, "latent_dim": 2, "hidden_dims": [16],
                 **model_overrides}
    cfg = Config.model_validate({"model": model_cfg})
    model = MixVAE(cfg, IMAGE_SHAPE, rngs=nnx.Rngs(0))
    k = cfg.model.num_components
    active_mask = jnp.array([1.0] * (k - 1) + [0.0])  # the last component closed
    tau_counts = None
    if cfg.model.use_tau_classifier:
        tau_counts = jnp.ones((k, cfg.model.num_classes)).at[0, 1].add(5.0)
    weights = save_weights(tmp_path / "weights.msgpack", model, tau_counts, active_mask)
    config_yaml = tmp_path / "config.yaml"
    config_yaml.write_text(to_yaml(cfg))
    images = np.random.default_rng(0).random((2, *IMAGE_SHAPE), dtype=np.float32)
    expected = {key: np.asarray(v) for key, v in
                predict_arrays(model, jnp.asarray(images), active_mask, tau_counts, cfg).items()}
    meta = make_data_meta(image_shape=IMAGE_SHAPE, scale_used=16.0, num_components=k,
                          num_classes=cfg.model.num_classes, prediction_keys=expected)
    return weights, config_yaml, meta, images, expected


def _load_locally(weights, config_yaml, meta, tmp_path):
    from mlflow.pyfunc import PythonModelContext

    from mixvae.tracking.pyfunc_model import MixvaeModel

    meta_path = tmp_path / "data_meta.json"
    meta_path.write_text(json.dumps(meta))
    model = MixvaeModel()
    model.load_context(PythonModelContext(
        artifacts={"weights": str(weights), "config": str(config_yaml), "data_meta": str(meta_path)},
        model_config=None))
    return model


def test_columns_for_tau_and_standard_priors(tmp_path):
    (tmp_path / "tau").mkdir()
    weights, config_yaml, meta, images, expected = _tiny_model(tmp_path / "tau", use_tau_classifier=True)
    model = _load_locally(weights, config_yaml, meta, tmp_path / "tau")
    frame = model.predict(None, images)
    assert list(frame.columns) == ["component", "responsibility_0", "responsibility_1", "responsibility_2",
                                   "predicted_label", "certainty", "ood_score", "reconstruction_error"]
    assert frame["predicted_label"].dtype == np.int64 and frame["ood_score"].dtype == np.float64
    np.testing.assert_array_equal(frame["predicted_label"], expected["predicted_label"])
    np.testing.assert_allclose(frame["ood_score"], expected["ood_score"], rtol=1e-5)

    (tmp_path / "std").mkdir()
    weights, config_yaml, meta, images, expected = _tiny_model(tmp_path / "std", prior_type="standard")
    model = _load_locally(weights, config_yaml, meta, tmp_path / "std")
    frame = model.predict(None, images[..., 0])  # (N, H, W) is accepted when Ch = 1
    assert list(frame.columns) == ["reconstruction_error"] and len(frame) == 2
    np.testing.assert_allclose(frame["reconstruction_error"], expected["reconstruction_error"], rtol=1e-5)


def test_chunks_pad_and_reject_bad_shapes(tmp_path):
    from mlflow.exceptions import MlflowException

    weights, config_yaml, meta, images, _ = _tiny_model(tmp_path)
    model = _load_locally(weights, config_yaml, meta, tmp_path)
    many = np.random.default_rng(1).random((300, *IMAGE_SHAPE), dtype=np.float32)  # 256 + a padded 44
    frame = model.predict(None, many)
    assert len(frame) == 300
    single = model.predict(None, many[299:300])
    np.testing.assert_allclose(frame.iloc[299].to_numpy(), single.iloc[0].to_numpy(), rtol=1e-5, atol=1e-6)
    as_lists = model.predict(None, images.tolist())  # what JSON serving hands over
    assert len(as_lists) == 2
    assert list(model.predict(None, images[:0]).columns) == [name for name, _ in meta["columns"]]
    bad_inputs = (np.zeros((2, 5, 5, 1), np.float32), np.zeros((2, 8, 8, 3), np.float32),
                  np.zeros(64, np.float32))
    for bad in bad_inputs:
        with pytest.raises(MlflowException, match=r"\(-1, 8, 8, 1\)") as excinfo:
            model.predict(None, bad)
        assert excinfo.value.error_code == "INVALID_PARAMETER_VALUE"


def _log_and_register(tracking_uri, tmp_path):
    from mixvae.tracking import log_model, open_run, register

    weights, config_yaml, meta, images, expected = _tiny_model(tmp_path)
    writer = open_run(uri=tracking_uri, run_name="pyfunc")
    writer.log_summary({"loss.total": 42.0})
    writer.flush()
    model_uri = log_model(writer.run_id, weights_path=weights, config_yaml_path=config_yaml, data_meta=meta,
                          input_example=images, uri=tracking_uri)
    name = f"mixvae-test-{uuid.uuid4().hex[:8]}"
    version = register(model_uri, name, "candidate", run_id=writer.run_id, uri=tracking_uri)
    writer.set_status("FINISHED")
    writer.close()
    return writer.run_id, model_uri, name, version, images, expected


@pytest.mark.server
def test_log_register_load_by_alias_and_predict(tracking_uri, tmp_path):
    import mlflow
    from mlflow.exceptions import MlflowException

    from mixvae.tracking import load_run
    from mixvae.tracking.model_logging import pip_requirements

    run_id, model_uri, name, version, images, expected = _log_and_register(tracking_uri, tmp_path)
    assert model_uri.startswith("models:/m-") and version == "1"
    record = load_run(run_id, tracking_uri)
    assert record.model_uri == model_uri
    assert record.tags["mixvae.registered_model"] == f"{name}/1@candidate"
    assert record.artifacts == []  # the model is a LoggedModel, not a run artifact
    logged = mlflow.MlflowClient(tracking_uri).get_logged_model(model_uri.removeprefix("models:/"))
    assert logged.source_run_id == run_id
    assert {m.key: m.value for m in logged.metrics or []} == {"loss.total": 42.0}  # the summary, linked

    info = mlflow.models.get_model_info(f"models:/{name}@candidate")
    (spec,) = info.signature.inputs.inputs
    assert (spec.type, spec.shape) == (np.dtype(np.float32), (-1, 8, 8, 1))
    columns = ["component", "responsibility_0", "responsibility_1", "responsibility_2",
               "reconstruction_error"]
    assert info.signature.outputs.input_names() == columns
    requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text().split()
    assert set(pip_requirements()) <= set(requirements)

    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    frame = model.predict(images)
    assert list(frame.columns) == columns and len(frame) == 2
    assert frame["component"].dtype == np.int64
    np.testing.assert_array_equal(frame["component"], expected["component"])
    np.testing.assert_allclose(frame[columns[1:4]].to_numpy(), expected["responsibilities"],
                               rtol=1e-5, atol=1e-7)
    assert (frame["responsibility_2"] == 0).all()  # closed component
    np.testing.assert_allclose(frame[columns[1:4]].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(frame["reconstruction_error"], expected["reconstruction_error"], rtol=1e-5)
    assert len(mlflow.pyfunc.load_model(f"models:/{name}/1").predict(images)) == 2
    with pytest.raises(MlflowException, match=r"\(-1, 8, 8, 1\)") as excinfo:
        model.predict(np.zeros((2, 5, 5, 1), np.float32))
    assert excinfo.value.error_code == "INVALID_PARAMETER_VALUE"


def test_logging_neither_runs_the_model_nor_scans_the_installed_distributions(local_store, tmp_path,
                                                                              monkeypatch):
    """MLflow's serving-input check (load, compile, predict the input example) and its map of every
    installed distribution are left out of logging; the logged model still loads and predicts, and
    MLflow's own state is left as it was found."""
    import jax.monitoring
    import mlflow
    from mlflow.utils import requirements_utils

    from mixvae.tracking import log_model, open_run
    from mixvae.tracking.model_logging import pip_requirements

    weights, config_yaml, meta, images, expected = _tiny_model(tmp_path)
    writer = open_run(uri=local_store, run_name="pyfunc-fast")
    writer.flush()
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)   # as in a fresh process
    compiled = []

    def on_duration(event, duration, **kwargs):
        if event.endswith("backend_compile_duration"):
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        model_uri = log_model(writer.run_id, weights_path=weights, config_yaml_path=config_yaml,
                              data_meta=meta, input_example=images, uri=local_store)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
    writer.set_status("FINISHED")
    writer.close()
    assert compiled == []                                           # the model was never run
    assert requirements_utils._MODULES_TO_PACKAGES is None          # not built, and left as found
    assert requirements_utils._PACKAGES_TO_MODULES == {}            # the check ran, without the scan
    requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text().split()
    assert set(pip_requirements()) <= set(requirements)
    info = mlflow.models.get_model_info(model_uri)
    assert info.saved_input_example_info is not None                # the input example is still logged
    frame = mlflow.pyfunc.load_model(model_uri).predict(images)
    np.testing.assert_array_equal(frame["component"], expected["component"])


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.mark.server
@pytest.mark.slow
def test_served_model_answers_and_rejects_wrong_shapes(tracking_uri, tmp_path, subprocess_env):
    _, _, name, _, images, expected = _log_and_register(tracking_uri, tmp_path)
    port = free_port()
    env = {**subprocess_env, "MLFLOW_TRACKING_URI": tracking_uri}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [mlflow_executable(), "models", "serve", "-m", f"models:/{name}@candidate",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/ping", 120, server), log_path.read_text()[-3000:]
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": images.tolist()})
        assert status == 200, body
        rows = body["predictions"]
        assert len(rows) == 2
        assert list(rows[0]) == ["component", "responsibility_0", "responsibility_1", "responsibility_2",
                                 "reconstruction_error"]
        assert [row["component"] for row in rows] == expected["component"].tolist()
        status, body = _post(f"http://127.0.0.1:{port}/invocations",
                             {"inputs": np.zeros((2, 5, 5, 1)).tolist()})
        assert 400 <= status < 500
        assert "(-1, 8, 8, 1)" in body["message"]
    finally:
        stop_process(server)  # with the uvicorn child it started (its own session)
