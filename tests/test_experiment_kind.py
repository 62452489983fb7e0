"""Experiments mixvae creates or trains in open in MLflow's model-training view: they carry the tag
`mlflow.experimentKind = custom_model_development` (the UI's "Machine learning" kind; without a kind an
experiment of plain runs may open in its GenAI view). A kind someone already chose is never replaced."""

from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient

from mixvae.tracking.mlflow_run import EXPERIMENT_KIND_TAG, MODEL_TRAINING, open_run
from mixvae.tracking.sweep_parent import create_parent

pytestmark = pytest.mark.server


def _kind(client: MlflowClient, experiment_id: str) -> str | None:
    return client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG)


def test_the_experiment_mixvae_creates_is_model_training(tracking_uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    name = f"kind-new-{uuid.uuid4().hex[:8]}"
    writer = open_run(uri=tracking_uri, experiment_name=name, experiment_from_cli=True, run_name="r")
    writer.set_status("FINISHED")
    writer.close()
    client = MlflowClient(tracking_uri)
    assert _kind(client, client.get_experiment_by_name(name).experiment_id) == MODEL_TRAINING


def test_an_experiment_mlflow_made_from_the_environment_gets_the_tag(tracking_uri, experiment_name):
    writer = open_run(uri=tracking_uri, run_name="r")  # MLFLOW_EXPERIMENT_NAME: MLflow creates it
    writer.set_status("FINISHED")
    writer.close()
    client = MlflowClient(tracking_uri)
    assert _kind(client, writer.experiment_id) == MODEL_TRAINING
    assert client.get_experiment(writer.experiment_id).name == experiment_name


def test_a_kind_already_chosen_stays(tracking_uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    client = MlflowClient(tracking_uri)
    name = f"kind-genai-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: "genai_development"})
    writer = open_run(uri=tracking_uri, experiment_name=name, experiment_from_cli=True, run_name="r")
    writer.set_status("FINISHED")
    writer.close()
    assert _kind(client, experiment_id) == "genai_development"


def test_a_sweeps_parent_marks_its_experiment(tracking_uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    client = MlflowClient(tracking_uri)
    name = f"kind-sweep-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)  # made by someone else, without a kind
    run_id = create_parent(tracking_uri, experiment_name=name, experiment_from_cli=True, run_name="s",
                           tags={"mixvae.kind": "sweep"}, params={})
    assert client.get_run(run_id).info.experiment_id == experiment_id
    assert _kind(client, experiment_id) == MODEL_TRAINING
