"""The MLflow writer sends queued epochs' metrics in one `log_batch`, and the store still records every
value with its own epoch as its step and its own timestamp; other calls keep their place in the order.

Real sqlite stores (the `local_store` fixture); the client is MLflow's own, subclassed only to write
down which calls reach the store. The writer's gathering window is made long (60 s) so that what is
merged does not depend on the machine's speed: a flush must still deliver at once.
"""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

KEYS = ("train/loss.total", "val/loss.total", "val/mixture.K_eff")


class RecordingClient(MlflowClient):
    """MlflowClient that writes down each log_batch's steps and each upload, then makes the call."""

    def __init__(self, uri: str):
        super().__init__(uri)
        self.calls: list[tuple] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        self.calls.append(("batch", sorted({m.step for m in metrics}), len(metrics)))
        return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    def log_artifact(self, run_id, local_path, artifact_path=None):
        self.calls.append(("upload", artifact_path))
        return super().log_artifact(run_id, local_path, artifact_path)


@pytest.fixture
def long_gathering(monkeypatch):
    from mixvae.tracking import mlflow_writer

    monkeypatch.setattr(mlflow_writer, "GATHER_S", 60.0)


def _writer(uri: str):
    from mixvae.tracking.mlflow_writer import MlflowWriter

    store = MlflowClient(uri)
    run_id = store.create_run(store.create_experiment("batching")).info.run_id
    client = RecordingClient(uri)
    return MlflowWriter(client, run_id=run_id, uri=uri), client, store


def _epoch(writer, step: int) -> None:
    writer.log_epoch(step, {key: 100.0 * i + step for i, key in enumerate(KEYS)})
    time.sleep(0.003)  # distinct timestamps between epochs


def test_merged_epochs_keep_their_steps_and_timestamps(local_store, long_gathering, tmp_path):
    writer, client, store = _writer(local_store)
    for step in (1, 2, 3):
        _epoch(writer, step)
    (tmp_path / "ckpt.txt").write_text("epoch 3")
    writer.log_artifact(tmp_path / "ckpt.txt", "checkpoints")
    for step in (4, 5, 6, 7):
        _epoch(writer, step)
    assert writer.flush(timeout=30)  # a flush does not wait out the gathering window
    writer.check()
    # Two log_batches for seven epochs; the upload keeps its place between epochs 3 and 4.
    assert client.calls == [("batch", [1, 2, 3], 9), ("upload", "checkpoints"), ("batch", [4, 5, 6, 7], 12)]

    stamps: dict[int, set[int]] = {}
    for i, key in enumerate(KEYS):
        history = sorted(store.get_metric_history(writer.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(s, 100.0 * i + s) for s in range(1, 8)]
        for metric in history:
            stamps.setdefault(metric.step, set()).add(metric.timestamp)
    # Every value of an epoch has that epoch's timestamp; the epochs' timestamps increase.
    assert all(len(s) == 1 for s in stamps.values())
    ordered = [next(iter(stamps[s])) for s in range(1, 8)]
    assert ordered == sorted(ordered) and len(set(ordered)) == 7
    assert abs(ordered[0] - time.time() * 1000) < 60_000
    assert store.get_run(writer.run_id).data.metrics == {key: 100.0 * i + 7 for i, key in enumerate(KEYS)}
    assert writer.set_status("FINISHED")
    writer.close()
    assert store.get_run(writer.run_id).info.status == "FINISHED"


def test_a_batch_holds_at_most_mlflows_limit(local_store, long_gathering):
    writer, client, store = _writer(local_store)
    wide = {f"val/k{j:03d}": float(j) for j in range(300)}
    for step in range(1, 8):
        writer.log_epoch(step, {**wide, "val/loss.total": float(step)})
    assert writer.flush(timeout=60)
    writer.check()
    assert [steps for _, steps, _ in client.calls] == [[1, 2, 3], [4, 5, 6], [7]]
    assert all(size <= 1000 for _, _, size in client.calls)
    history = store.get_metric_history(writer.run_id, "val/loss.total")
    assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(1, 8)]
    assert len(store.get_metric_history(writer.run_id, "val/k299")) == 7
    writer.close()


def test_a_refused_epoch_does_not_take_the_others_with_it(local_store, long_gathering):
    """The store refuses a merged batch as a whole; its calls are then made one by one, so only the
    refused epoch is lost and the failure names it, as without merging."""
    from mixvae.tracking.writer import TrackingError

    writer, client, store = _writer(local_store)
    _epoch(writer, 1)
    writer.log_epoch(2, {"val/bad!key": 1.0})
    _epoch(writer, 3)
    assert writer.flush(timeout=30)
    with pytest.raises(TrackingError, match=r"^tracking failure: log_batch of epoch 2 failed: .*bad!key"):
        writer.check()
    assert [steps for _, steps, _ in client.calls] == [[1, 2, 3], [1], [2], [3]]
    history = store.get_metric_history(writer.run_id, "val/loss.total")
    assert sorted(m.step for m in history) == [1, 3]
    writer.close()


def test_a_lone_epoch_is_sent_without_a_flush(local_store):
    """Without later epochs the gathering window ends and the epoch goes alone."""
    from mixvae.tracking import mlflow_writer

    writer, client, store = _writer(local_store)
    _epoch(writer, 1)
    deadline = time.monotonic() + mlflow_writer.GATHER_S + 30
    while not store.get_metric_history(writer.run_id, "val/loss.total") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [(m.step, m.value) for m in store.get_metric_history(writer.run_id, "val/loss.total")] == [(1, 101.0)]
    assert client.calls == [("batch", [1], 3)]
    writer.close()
