"""Realistic synthetic RunRecords for the report and compare tests.

Each builder returns what `mixvae.tracking.load_run` would return for a run of that configuration:
a resolved config.yaml dict, summary.json, bare summary metrics, per-epoch histories, the arrays of
diagnostics/eval.npz and history.npz (as the trainer writes them), curriculum events and an artifact
list. The arrays are synthetic but shaped and distributed like a digits run: labels 0–9, clustered
latents, peaked responsibilities, 8×8 images in [0, 1].
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass

import numpy as np

try:  # the real record once mixvae.tracking lands; a structurally identical stand-in until then
    from mixvae.tracking.record import RunRecord
except ImportError:
    @dataclass
    class RunRecord:
        run_id: str
        run_name: str
        experiment_name: str
        status: str
        start_time: int | None
        end_time: int | None
        tags: dict
        params: dict
        config: dict | None
        summary: dict | None
        metrics: dict
        histories: dict
        diagnostics: dict | None
        history_arrays: dict | None
        events: list | None
        artifacts: list
        model_uri: str | None


H = W = 8
N_SPLIT = 180
START_MS = 1_700_000_000_000

DEFAULT_CONFIG = {
    "experiment": {"name": "quick", "description": "", "tags": {}},
    "data": {"dataset": "digits", "path": None, "cache_dir": None, "download": False, "num_samples": None,
             "val_fraction": 0.1, "test_fraction": 0.1, "test_source": "auto", "stratify": True,
             "num_labeled": 0, "balanced_labels": True, "scale": "auto", "seed": 0},
    "model": {"prior_type": "mixture", "num_components": 10, "num_classes": 10, "latent_dim": 2,
              "latent_layout": "shared", "encoder_type": "dense", "decoder_type": "dense",
              "hidden_dims": [256, 128, 64], "conv_channels": [32, 64, 128], "component_embedding_dim": None,
              "decoder_conditioning": "auto", "learnable_pi": False, "use_gumbel_softmax": False,
              "use_straight_through_gumbel": True, "gumbel_temperature": 1.0, "gumbel_temperature_min": 0.5,
              "gumbel_temperature_anneal_epochs": 0, "top_m_gating": 0, "reconstruction_loss": "bce",
              "use_heteroscedastic_decoder": False, "sigma_granularity": "pixel", "sigma_min": 0.05,
              "sigma_max": 0.5, "recon_weight": 1.0, "kl_weight": 1.0, "kl_warmup_epochs": 0,
              "c_regularizer": "categorical", "kl_c_weight": 1.0, "kl_c_anneal_epochs": 0,
              "c_logit_prior_weight": 1.0, "c_logit_prior_mean": 5.0, "c_logit_prior_sigma": 1.0,
              "dirichlet_alpha": None, "dirichlet_weight": 1.0, "component_diversity_weight": 0.0,
              "label_weight": 1.0, "l1_weight": 0.0, "dropout_rate": 0.2, "use_tau_classifier": False,
              "tau_smoothing_alpha": 1.0, "tau_count_decay": 1.0, "tau_free_count_threshold": 1.0,
              "vamp_num_samples_kl": 1, "vamp_pseudo_init_method": "random", "vamp_pseudo_lr_scale": 0.1,
              "geometric_arrangement": "circle", "geometric_radius": 2.0},
    "training": {"seed": 0, "learning_rate": 0.001, "weight_decay": 0.0001, "grad_clip_norm": 1.0,
                 "batch_size": 128, "eval_batch_size": 512, "drop_remainder": True, "max_epochs": 200,
                 "patience": 20, "min_delta": 0.0, "monitor": "val/loss.total", "monitor_mode": "auto",
                 "checkpoint_every": 5},
    "curriculum": {"enabled": False, "k_active_init": 1, "k_active_max": None,
                   "unlock": {"policy": "plateau", "monitor": "val/loss.recon", "patience": 5, "min_delta": 0.01,
                              "cooldown": 2},
                   "kick": {"enabled": True, "epochs": 3, "gumbel_temperature": 5.0, "logit_bias": 0.0,
                            "regularizer_scale": 1.0, "disable_straight_through": False},
                   "stop": {"adaptation_epochs": 5, "min_improvement": 0.0}},
    "tracking": {"uri": None, "experiment_name": "mixvae", "run_name": None, "log_model": True,
                 "register_model": None, "model_alias": "candidate", "log_checkpoints": True,
                 "log_system_metrics": False, "report": True, "html": True, "report_dir": "reports"},
}


def resolved_config(overrides: dict) -> dict:
    """DEFAULT_CONFIG updated with {'model.latent_dim': 4, ...}, with the derived values resolved."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(dotted)
        node[leaf] = value
    model = cfg["model"]
    if model["decoder_conditioning"] == "auto":
        model["decoder_conditioning"] = "cin" if model["prior_type"] in ("mixture", "geometric_mog") else "none"
    if model["component_embedding_dim"] is None:
        model["component_embedding_dim"] = model["latent_dim"]
    if cfg["curriculum"]["k_active_max"] is None:
        cfg["curriculum"]["k_active_max"] = model["num_components"]
    return cfg


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _templates(rng, num_classes: int) -> np.ndarray:
    """One smooth 8×8 blob pattern per class, values in [0, 1]."""
    yy, xx = np.mgrid[0:H, 0:W]
    out = np.zeros((num_classes, H, W, 1), dtype=np.float32)
    for c in range(num_classes):
        for _ in range(3):
            cy, cx = rng.uniform(1, 6, size=2)
            out[c, :, :, 0] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(1.5, 4))
    return np.clip(out / out.max(axis=(1, 2, 3), keepdims=True), 0, 1)


@dataclass
class Scenario:
    name: str
    overrides: dict
    status: str = "FINISHED"
    epochs: int = 24
    best_epoch: int = 14
    stopped_early: bool = True
    with_diagnostics: bool = True
    labeled_split: bool = True
    active_components: int | None = None    # curriculum: components open at the best epoch
    seed: int = 0
    run_id: str | None = None


def _run_id(name: str, seed: int) -> str:
    return hashlib.sha256(f"{name}-{seed}".encode()).hexdigest()[:32]


def build_record(sc: Scenario) -> RunRecord:
    rng = np.random.default_rng(sum(map(ord, sc.name)) + 1000 * sc.seed)
    cfg = resolved_config({**sc.overrides, "training.seed": sc.seed})
    m, t, cur = cfg["model"], cfg["training"], cfg["curriculum"]
    prior = m["prior_type"]
    mixture_based = prior in ("mixture", "vamp", "geometric_mog")
    component_decoding = prior in ("mixture", "geometric_mog")
    K = m["num_components"] if mixture_based else 1
    C, D = m["num_classes"], m["latent_dim"]
    decentralized = m["latent_layout"] == "decentralized"
    gumbel = m["use_gumbel_softmax"]
    hetero = m["use_heteroscedastic_decoder"]
    use_tau = m["use_tau_classifier"]
    k_best = sc.active_components or K
    active = np.zeros(K, dtype=bool)
    active[:k_best] = True
    run_id = sc.run_id or _run_id(sc.name, sc.seed)

    # ---- per-image arrays on the summary split
    N = N_SPLIT
    labels = rng.integers(0, C, N) if sc.labeled_split else np.full(N, -1)
    true_labels = rng.integers(0, C, N) if not sc.labeled_split else labels
    owner = np.arange(C) % max(k_best, 1)                   # class → preferred open component
    diag = None
    if sc.with_diagnostics:
        diag = {"index": np.arange(N), "labels": labels.astype(np.int64)}
        templates = _templates(rng, C)
        images = np.clip(templates[true_labels] + rng.normal(0, 0.08, (N, H, W, 1)), 0, 1).astype(np.float32)
        centres = rng.normal(0, 2.0, (C, D))
        if mixture_based:
            logits = rng.normal(0, 1.0, (N, K))
            preferred = np.where(rng.random(N) < 0.85, owner[true_labels], rng.integers(0, k_best, N))
            logits[np.arange(N), preferred] += 4.5
            logits[:, ~active] = -np.inf
            resp = _softmax(logits)
            diag["responsibilities"] = resp.astype(np.float32)
            argmax = resp.argmax(axis=1)
        if decentralized:
            z = centres[true_labels][:, None, :] + rng.normal(0, 0.6, (N, K, D)) + rng.normal(0, 1.5, (1, K, D))
            diag["z_mean"] = z.astype(np.float32)
            diag["z_mean_selected"] = z[np.arange(N), argmax].astype(np.float32)
            diag["kl_per_component"] = np.abs(rng.normal(2.0, 0.7, (N, K))).astype(np.float32) * (
                1 + np.arange(K) / K)
        else:
            z = (centres[true_labels] + rng.normal(0, 0.6, (N, D))).astype(np.float32)
            diag["z_mean"] = z
            diag["z_mean_selected"] = z
        diag["recon_error"] = rng.gamma(9.0, 3.4, N).astype(np.float32)
        fixed = rng.choice(N, 8, replace=False)
        diag["recon_images"] = images[fixed]
        diag["recon_means"] = np.clip(images[fixed] * 0.85 + 0.05 + rng.normal(0, 0.04, (8, H, W, 1)), 0, 1)
        if hetero:
            diag["recon_sigma"] = rng.uniform(m["sigma_min"], m["sigma_max"], (8, H, W, 1)).astype(np.float32)
            diag["sigma"] = np.clip(np.concatenate([rng.normal(0.12, 0.04, 4000), np.full(600, m["sigma_min"])]),
                                    m["sigma_min"], m["sigma_max"]).astype(np.float32)
        if component_decoding:
            six = fixed[:6]
            diag["percomp_images"] = images[six]
            per = np.stack([templates[(np.arange(K) + c) % C] for c in range(6)])          # [6, K, H, W, 1]
            diag["percomp_means"] = np.clip(per * 0.9 + rng.normal(0, 0.03, per.shape), 0, 1).astype(np.float32)
            weights = resp[six].copy()
            if gumbel and m["use_straight_through_gumbel"]:
                weights = np.eye(K, dtype=np.float32)[weights.argmax(axis=1)]
            diag["percomp_weights"] = weights.astype(np.float32)
            diag["percomp_resp"] = resp[six].astype(np.float32)
            if hetero:
                diag["percomp_sigma"] = rng.uniform(m["sigma_min"], m["sigma_max"], (6, K, H, W, 1)).astype(np.float32)
            diag["embeddings"] = rng.normal(0, 1, (K, m["component_embedding_dim"])).astype(np.float32)
            diag["pi"] = np.where(active, 1.0 / k_best, 0.0).astype(np.float32)
            diag["active_mask"] = active.astype(np.float32)
        if gumbel:
            g = -np.log(-np.log(rng.uniform(1e-6, 1 - 1e-6, (N, K))))
            sampled_logits = np.where(active, np.log(np.maximum(resp, 1e-30)) + g, -np.inf) / 0.5
            diag["routing_sampled"] = _softmax(sampled_logits).astype(np.float32)
        if use_tau:
            alpha = m["tau_smoothing_alpha"]
            labeled = rng.random(N) < 0.6
            counts = alpha + resp[labeled].T @ np.eye(C)[labels[labeled]]
            counts[k_best - 2:] = alpha + 0.05                                 # two free components
            tau = counts / counts.sum(axis=1, keepdims=True)
            p = resp @ tau
            diag.update(tau=tau.astype(np.float32), tau_counts=counts.astype(np.float32),
                        tau_free=(counts - alpha).sum(axis=1) < m["tau_free_count_threshold"],
                        tau_pred=p.argmax(axis=1), tau_certainty=p.max(axis=1).astype(np.float32),
                        tau_ood=(1 - (resp * tau.max(axis=1)).max(axis=1)).astype(np.float32))

    # ---- per-epoch histories
    E = sc.epochs
    epochs = np.arange(1, E + 1)
    decay = np.exp(-epochs / 6.0)
    terms = {"loss.recon": 28 + 30 * decay}
    terms["loss.kl_z"] = (6 + 3 * (1 - decay)) * (K if decentralized else 1) / (3 if decentralized else 1)
    if component_decoding and m["c_regularizer"] in ("categorical", "both"):
        terms["loss.kl_c"] = 0.3 + 1.5 * decay
    if component_decoding and m["c_regularizer"] in ("logit_mog", "both"):
        terms["loss.kl_c_logit_mog"] = 4.0 + 5 * decay
    if use_tau:
        terms["loss.classifier"] = 0.4 + 1.6 * decay
    histories: dict[str, list[tuple[int, float]]] = {}

    def put(key, values):
        histories[key] = [(int(e), float(v)) for e, v in zip(epochs, values)]

    gap = np.where(epochs > sc.best_epoch, 0.08 * (epochs - sc.best_epoch), 0.0)
    for term, values in terms.items():
        put(f"train/{term}", values)
        put(f"val/{term}", values * (1.03 + 0.02 * gap) + 0.2)
    put("train/loss.total", sum(terms.values()))
    put("val/loss.total", sum(v * (1.03 + 0.02 * gap) + 0.2 for v in terms.values()))
    put("train/loss.objective", sum(terms.values()) * 0.98)
    put("train/training.epoch_time_sec", 0.15 + 0.01 * rng.random(E))
    if mixture_based:
        k_eff = 1 + (k_best - 1.5) * (1 - decay)
        put("train/mixture.K_eff", k_eff)
        put("val/mixture.K_eff", k_eff * 0.98)
        put("val/mixture.responsibility_confidence_mean", 0.6 + 0.3 * (1 - decay))
        put("train/mixture.responsibility_confidence_mean", 0.6 + 0.31 * (1 - decay))
        if sc.labeled_split:
            put("val/clustering.acc", 0.3 + 0.5 * (1 - decay))
    if gumbel:
        put("train/mixture.routing_confidence_mean", 0.75 + 0.2 * (1 - decay))
        put("train/training.gumbel_temperature", np.maximum(0.5, 1.0 - 0.025 * (epochs - 1)))
    if use_tau:
        put("val/tau.accuracy", 0.4 + 0.45 * (1 - decay))
    events = None
    k_hist = np.full(E, K)
    if cur["enabled"]:
        unlock_at = [6, 12, 18][: k_best - 1]
        k_hist = np.array([1 + sum(e >= u for u in unlock_at) for e in epochs])
        kick = np.array([any(u <= e < u + cur["kick"]["epochs"] for u in unlock_at) for e in epochs])
        put("train/curriculum.k_active", k_hist)
        put("train/curriculum.unlocked", [1.0 if e in unlock_at else 0.0 for e in epochs])
        put("train/curriculum.kick_active", kick.astype(float))
        events = []
        for i, u in enumerate(unlock_at):
            events.append({"epoch": u, "event": "unlock", "component": i + 1, "k_active": i + 2,
                           "monitor_value": float(terms["loss.recon"][u - 2]), "reason": None})
            events.append({"epoch": u + cur["kick"]["epochs"] - 1, "event": "kick_end", "component": i + 1,
                           "k_active": i + 2, "monitor_value": None, "reason": None})
        events.append({"epoch": 23, "event": "stop", "component": None, "k_active": k_best,
                       "monitor_value": float(terms["loss.recon"][22]), "reason": "no_improvement"})

    history_arrays = None
    if sc.with_diagnostics and mixture_based:
        mask_hist = np.array([[k < k_hist[e] for k in range(K)] for e in range(E)], dtype=np.float32)
        usage = rng.dirichlet(np.ones(K) * 5, E) * mask_hist
        usage /= usage.sum(axis=1, keepdims=True)
        pi = mask_hist / mask_hist.sum(axis=1, keepdims=True)
        history_arrays = {"epoch": epochs, "pi": pi.astype(np.float32), "usage_train": usage.astype(np.float32),
                          "usage_val": (usage * 0.97 + 0.03 * pi).astype(np.float32), "active_mask": mask_hist}

    # ---- summary (absent for a run that failed before its final evaluation)
    summary = None
    b = sc.best_epoch - 1
    metrics, metrics_status = {}, {}
    if sc.with_diagnostics:
        for term, values in terms.items():
            metrics[term] = float(values[b] * 1.01)
        metrics["loss.total"] = float(sum(metrics[k] for k in terms))
        metrics["latent.active_units"] = float(D)
        metrics.update({"training.best_epoch": float(sc.best_epoch), "training.epochs_completed": float(E),
                        "training.stopped_early": float(sc.stopped_early), "training.time_sec": 9.87654,
                        "training.compile_time_sec": 3.2109, "training.steps_per_sec": 181.23456,
                        "training.peak_rss_mb": 812.3456,
                        "training.best_monitor_value": float(histories[t["monitor"]][b][1])})
        if mixture_based:
            usage_best = resp.mean(axis=0)
            keff = float(np.exp(-np.sum(usage_best[usage_best > 0] * np.log(usage_best[usage_best > 0]))))
            entropy = -(resp * np.log(np.maximum(resp, 1e-30))).sum(axis=1)
            metrics.update({"mixture.K_eff": keff, "mixture.active_components": float(np.sum(usage_best > 0.01)),
                            "mixture.dead_components": float(np.sum(np.bincount(argmax, minlength=K)[active] == 0)),
                            "mixture.responsibility_confidence_mean": float(resp.max(axis=1).mean()),
                            "mixture.component_entropy": float(entropy.mean())})
            if sc.labeled_split:
                metrics.update({"clustering.nmi": 0.71234, "clustering.ari": 0.61234, "clustering.acc": 0.812345,
                                "mixture.specialization": 0.7765})
            else:
                for key in ("clustering.nmi", "clustering.ari", "clustering.acc", "mixture.specialization"):
                    metrics_status[key] = {"status": "skipped", "reason": "the summary split has no labels"}
            metrics_status["mixture.pi_entropy"] = {"status": "disabled",
                                                    "reason": "π is fixed and uniform (model.learnable_pi is false)"}
        else:
            reason = "prior_type is 'standard': no mixture components"
            for key in ("mixture.K_eff", "clustering.acc"):
                metrics_status[key] = {"status": "disabled", "reason": reason}
        if use_tau:
            metrics.update({"tau.accuracy": 0.84321, "tau.certainty_mean": 0.7712, "tau.calibration_error": 0.0412,
                            "tau.num_free_channels": 2.0, "tau.label_coverage": 10.0})
        else:
            metrics_status["tau.accuracy"] = {"status": "disabled", "reason": "model.use_tau_classifier is false"}
        if hetero:
            metrics.update({"uncertainty.sigma_mean": 0.1323, "uncertainty.sigma_std": 0.0521,
                            "uncertainty.sigma_saturation": 0.1304, "uncertainty.calibration_error": 0.2231})
        if cur["enabled"]:
            metrics.update({"curriculum.final_k_active": float(k_hist[-1]), "curriculum.best_k_active": float(k_best),
                            "curriculum.unlock_count": float(k_best - 1), "curriculum.kick_epochs_total": 9.0,
                            "curriculum.stopped": 1.0})
        per_component = {}
        if mixture_based:
            maj = [int(np.bincount(true_labels[argmax == k], minlength=C).argmax()) if np.any(argmax == k) else None
                   for k in range(K)]
            share = [float(np.mean(true_labels[argmax == k] == maj[k])) if maj[k] is not None else None
                     for k in range(K)]
            per_component = {"usage": [float(u) for u in resp.mean(axis=0)],
                             "pi": [float(p) for p in np.where(active, 1.0 / k_best, 0.0)],
                             "majority_label": maj if sc.labeled_split else [None] * K,
                             "majority_share": share if sc.labeled_split else [None] * K}
        summary = {
            "run_id": run_id, "status": sc.status, "summary_split": "test", "best_epoch": sc.best_epoch,
            "metrics": metrics, "metrics_status": metrics_status,
            "clustering_acc_method": "hungarian" if K == C else "purity",
            "per_component": per_component,
            "curriculum": {"stop_reason": "no_improvement" if cur["enabled"] else "none", "events": events or []},
            "data": {"dataset": "digits", "shape": [8, 8, 1], "n_train": 1437, "n_val": 180, "n_test": 180,
                     "n_labeled": cfg["data"]["num_labeled"], "scale_used": 16.0, "digest": "1a2b3c4d"},
            "warnings": [],
            "versions": {"mixvae": "0.1.0", "jax": "0.10.2", "flax": "0.12.8", "optax": "0.2.8", "mlflow": "3.17.2"},
        }

    tags = {"mixvae.kind": "train", "mixvae.version": "0.1.0", "mixvae.architecture": f"{sc.name}-arch",
            "mixvae.config_hash": f"{sc.name[:6]:0<6}abcdef"[:12],
            "mixvae.config_hash_noseed": f"{sc.name[:6]:0<6}noseed"[:12],
            "mixvae.config_name": cfg["experiment"]["name"],
            "mixvae.git_commit": "0123456789abcdef0123456789abcdef01234567", "mixvae.git_dirty": "false",
            "mixvae.dataset": "digits", "mixvae.dataset_digest": "1a2b3c4d", "mixvae.split_sizes": "1437/180/180",
            "mixvae.summary_split": "test", "mixvae.overrides": ""}
    if summary:
        tags["mixvae.clustering_acc_method"] = summary["clustering_acc_method"]
    if sc.status == "FAILED":
        tags["mixvae.status_reason"] = "RuntimeError: synthetic failure in epoch 4"
    params = {key: json.dumps(value) for section, values in cfg.items() if section != "tracking"
              for key, value in _flat(values, section).items()
              if key not in ("experiment.description", "experiment.tags")}
    artifacts = [("config.input.yaml", 412), ("config.yaml", 2380)]
    if sc.with_diagnostics:
        artifacts += [("diagnostics/eval.npz", 183_442), ("diagnostics/history.npz", 9_810), ("summary.json", 4_051),
                      ("checkpoints/best/meta.json", 301), ("checkpoints/best/state.msgpack", 1_204_331)]
    artifacts += [("checkpoints/last/meta.json", 301), ("checkpoints/last/state.msgpack", 2_408_662),
                  ("logs/train.log", 5_113)]
    return RunRecord(
        run_id=run_id, run_name=f"{sc.name}-run", experiment_name="mixvae", status=sc.status,
        start_time=START_MS + 1000 * sc.seed, end_time=START_MS + 1000 * sc.seed + 74_500,
        tags=tags, params=params, config=cfg, summary=summary, metrics=metrics if summary else {},
        histories=histories, diagnostics=diag, history_arrays=history_arrays, events=events,
        artifacts=sorted(artifacts), model_uri="models:/m-0123abcd" if sc.status == "FINISHED" else None)


def _flat(d: dict, prefix: str) -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key != "tags":
            out.update(_flat(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


QUICK = {"model.latent_layout": "decentralized", "model.use_gumbel_softmax": True,
         "model.gumbel_temperature_anneal_epochs": 20, "model.c_regularizer": "logit_mog",
         "model.component_embedding_dim": 16, "model.hidden_dims": [128, 64], "training.learning_rate": 0.002,
         "training.max_epochs": 30, "training.patience": 10}

SCENARIOS = {
    "mixture_gumbel": Scenario("mixture_gumbel", QUICK),
    "conditioning_none": Scenario("conditioning_none", {"model.decoder_conditioning": "none",
                                                        "training.max_epochs": 30}, epochs=30,
                                  best_epoch=29, stopped_early=False, labeled_split=False),
    "standard": Scenario("standard", {"model.prior_type": "standard", "model.latent_dim": 4}),
    "heteroscedastic": Scenario("heteroscedastic", {
        "model.prior_type": "geometric_mog", "model.reconstruction_loss": "mse",
        "model.use_heteroscedastic_decoder": True, "experiment.name": "geometric"}),
    "tau": Scenario("tau", {**QUICK, "model.num_components": 12, "model.use_tau_classifier": True,
                            "data.num_labeled": 100, "training.monitor": "val/tau.accuracy"}),
    "curriculum": Scenario("curriculum", {**QUICK, "curriculum.enabled": True, "training.monitor": "val/loss.recon",
                                          "training.patience": 30}, active_components=4),
    "failed": Scenario("failed", QUICK, status="FAILED", epochs=4, best_epoch=4, with_diagnostics=False),
}


def record(name: str, **changes) -> RunRecord:
    """The record of one named scenario; keyword arguments replace Scenario fields."""
    base = SCENARIOS[name]
    fields = {**base.__dict__, **changes}
    return build_record(Scenario(**fields))
