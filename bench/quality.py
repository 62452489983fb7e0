"""Quality benchmark: mixvae presets over seeds, next to classical baselines on the same splits.

    python bench/quality.py PRESET [PRESET ...] [--seeds 0-4] [--set KEY=VALUE ...] [--out docs/results.md]
                            [--tracking-uri URI] [--no-write] [--reports] [--gpu]

Each preset is one seed group (`mixvae train -c PRESET --seeds ...`, no model logging, no reports unless
--reports) in a temporary sqlite store (or --tracking-uri); the children's summary metrics (test split)
are read back from MLflow. The baselines are fitted on the training split and scored on the test split
of the data split each run used, with random_state = the run's seed: k-means, a diagonal GMM,
PCA + full GMM, and t-SNE + k-means (mixvae's `cluster_init: tsne` warm-start clustering; a test image
takes the cluster of its nearest training image), K = model.num_classes; with labels also logistic
regression on exactly mixvae's labelled images (`train_y >= 0`) and 50-cluster k-means labelled by
their majority vote. The tables (mean ± sample std over seeds, "–" where a row has no such metric) go
to stdout and replace the `## PRESET` section of --out. Children inherit the environment (a
JAX_COMPILATION_CACHE_DIR there is used).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

import numpy as np  # noqa: E402

REG_COVAR = 1e-2  # pixels are scaled to [0, 1]; constant border pixels need a variance floor
INTRO = """# Quality results

Clustering and reconstruction quality of the shipped presets over several seeds, next to classical
baselines computed on exactly the same data splits. Produced by `bench/quality.py`; re-running a
preset replaces its `## preset` section and keeps everything else in this file.
"""
# (header, metric key, decimals)
COLUMNS = [("ACC", "clustering.acc", 3), ("NMI", "clustering.nmi", 3), ("ARI", "clustering.ari", 3),
           ("K_eff", "mixture.K_eff", 2), ("active comp.", "mixture.active_components", 1),
           ("latent.active_units", "latent.active_units", 1), ("loss.recon", "loss.recon", 2),
           ("tau.accuracy", "tau.accuracy", 3), ("wall (s)", "wall", 1)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+", metavar="PRESET", help="preset name or config path")
    parser.add_argument("--seeds", default="0-4", help="0,1,2 or 0-4 (default 0-4)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=common.ROOT / "docs" / "results.md")
    parser.add_argument("--tracking-uri", default=None, help="keep the runs there (default: a temporary store)")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--reports", action="store_true", help="build each run's report (default: none)")
    parser.add_argument("--gpu", action="store_true", help="let JAX use its default backend")
    return parser.parse_args()


def usage_error(message: str) -> None:
    print(f"quality.py: {message}", file=sys.stderr)
    sys.exit(2)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- mixvae --------------------------------------------------------------------------------------


def train_group(config: str, args, uri: str, workdir: Path, on_run) -> tuple[str | None, int]:
    """`mixvae train --seeds` in a subprocess; calls on_run(run id) as each child finishes; (group id, rc)."""
    command = [sys.executable, "-m", "mixvae", "-q", "--tracking-uri", uri, "train", "-c", config,
               "--seeds", args.seeds, "--set", "tracking.log_model=false"]
    command += [a for s in args.sets for a in ("--set", s)] + ([] if args.reports else ["--no-report"])
    env = dict(common.child_env(workdir), MLFLOW_TRACKING_URI=uri)
    group = None
    with open(workdir / "mixvae-train.log", "w") as log, subprocess.Popen(
            command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=log, text=True) as proc:
        for line in proc.stdout:
            key, _, value = line.strip().partition("=")
            if key == "run_id":
                on_run(value)
            elif key == "group_run_id":
                group = value
    return group, proc.returncode


def read_run(client, run_id: str) -> dict:
    run = client.get_run(run_id)
    params, tags = run.data.params, run.data.tags
    metrics = {k: v for k, v in run.data.metrics.items() if "/" not in k}  # bare keys: the summary
    if run.info.end_time and run.info.start_time:
        metrics["wall"] = (run.info.end_time - run.info.start_time) / 1000
    return {"id": run_id, "status": run.info.status, "metrics": metrics, "seed": int(params.get("training.seed", -1)),
            "data_seed": int(params.get("data.seed", 0)), "digest": tags.get("mixvae.dataset_digest"),
            "arch": tags.get("mixvae.architecture"), "split": tags.get("mixvae.summary_split"),
            "acc_method": tags.get("mixvae.clustering_acc_method")}


# ---- baselines -----------------------------------------------------------------------------------


def cluster(kind: str, xtr, xte, k: int, seed: int) -> np.ndarray:
    """Test-split responsibilities [N, k] of a clustering fitted on the training split."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    if kind == "k-means":
        return np.eye(k)[KMeans(k, n_init=10, random_state=seed).fit(xtr).predict(xte)]
    if kind == "t-SNE":
        # mixvae's t-SNE warm-start clustering of the training images; a test image takes the
        # cluster of its nearest training image (t-SNE embeds no new points)
        from sklearn.neighbors import NearestNeighbors
        from mixvae.model.priors import cluster_images
        train_clusters = cluster_images("tsne", xtr, k, seed)
        _, nearest = NearestNeighbors(n_neighbors=1).fit(xtr).kneighbors(xte)
        return np.eye(k)[train_clusters[nearest[:, 0]]]
    if kind == "GMM diag":
        gmm = GaussianMixture(k, covariance_type="diag", reg_covar=REG_COVAR, random_state=seed)
        return gmm.fit(xtr).predict_proba(xte)
    pca = PCA(min(50, xtr.shape[1], xtr.shape[0]), whiten=False, random_state=seed).fit(xtr)
    gmm = GaussianMixture(k, covariance_type="full", reg_covar=REG_COVAR, random_state=seed)
    return gmm.fit(pca.transform(xtr)).predict_proba(pca.transform(xte))


def classify(kind: str, xtr, ytr, xte, seed: int, num_classes: int) -> np.ndarray:
    """Predicted test labels from the labelled training images (ytr ≥ 0); k-means also sees the rest."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    lab = ytr >= 0
    if kind == "logreg":
        return LogisticRegression(max_iter=5000, random_state=seed).fit(xtr[lab], ytr[lab]).predict(xte)
    km = KMeans(50, n_init=10, random_state=seed).fit(xtr)
    votes = np.zeros((50, num_classes))
    np.add.at(votes, (km.labels_[lab], ytr[lab]), 1)
    mapping = np.where(votes.sum(1) > 0, votes.argmax(1), np.bincount(ytr[lab]).argmax())
    return mapping[km.predict(xte)]


ALL_BASELINES = ("k-means", "GMM diag", "PCA+GMM", "t-SNE", "logreg", "k-means 50")


def baselines(ds, num_classes: int, seed: int, kinds: tuple[str, ...] = ALL_BASELINES) -> dict[str, dict]:
    """Baseline row label → metrics on the test split, for one seed (the labelled kinds only when the
    split has labels)."""
    # imported before the timers start
    import sklearn.cluster, sklearn.decomposition, sklearn.linear_model, sklearn.manifold, sklearn.mixture  # noqa: E401, F401, E501
    from mixvae.metrics.compute import clustering_metrics, usage_metrics
    keep = ds.test_y >= 0  # test images with a label (all of them in the shipped data sets)
    xtr, c = ds.train_x.reshape(ds.n_train, -1), num_classes
    xte, y = ds.test_x[keep].reshape(int(keep.sum()), -1), ds.test_y[keep]
    names = {"k-means": f"k-means, pixels (K = {c})", "GMM diag": f"GMM diagonal, pixels (K = {c})",
             "PCA+GMM": f"PCA {min(50, xtr.shape[1])} + GMM full (K = {c})",
             "t-SNE": f"t-SNE + k-means (K = {c}), test by nearest training image",
             "logreg": f"logistic regression, {ds.n_labeled} labels",
             "k-means 50": f"k-means 50 + majority vote, {ds.n_labeled} labels"}
    out = {}
    for kind in (k for k in kinds if ds.n_labeled or k not in ("logreg", "k-means 50")):
        t0 = time.perf_counter()
        if kind in ("logreg", "k-means 50"):
            metrics = {"clustering.acc": float(np.mean(classify(kind, xtr, ds.train_y, xte, seed, c) == y))}
        else:
            resp = cluster(kind, xtr, xte, c, seed)
            metrics = {**clustering_metrics(resp, y, np.ones(c), c)[0], **usage_metrics(resp.mean(0), np.ones(c))}
        out[names[kind]] = {**metrics, "wall": time.perf_counter() - t0, "kind": kind}
    return out


def baseline_rows(loaded, sets: list[str], runs: list[dict], seeds: list[int], notes: list[str]) -> dict:
    """Baseline row label → per-seed metrics; each seed on the data split its run used."""
    from mixvae.config import load_config
    from mixvae.data import load_dataset
    by_seed, datasets, rows = {r["seed"]: r for r in runs}, {}, {}
    for seed in seeds:
        run = by_seed.get(seed, {})
        data_seed = run.get("data_seed", int(loaded.config.data.seed))
        if data_seed not in datasets:
            overrides = sets + [f"data.seed={data_seed}"]
            datasets[data_seed] = load_dataset(load_config(loaded.path, overrides).config)
        ds = datasets[data_seed]
        if not ds.has_labels:
            notes.append("No baselines: the data set has no labels.")
            return {}
        if run.get("digest") and run["digest"] != ds.digest:
            notes.append(f"**Warning**: seed {seed}: data digest {ds.digest} ≠ the run's {run['digest']}.")
        t0, result = time.perf_counter(), baselines(ds, int(loaded.config.model.num_classes), seed)
        for name, metrics in result.items():
            rows.setdefault(name, []).append(metrics)
        accs = " · ".join(f"{m['kind']} {m['clustering.acc']:.3f}" for m in result.values())
        progress(f"  baselines seed {seed}: ACC {accs} ({time.perf_counter() - t0:.1f} s)")
    return rows


# ---- the section ---------------------------------------------------------------------------------


def cells(metrics: list[dict], columns) -> list[str]:
    return [common.mean_std([m[key] for m in metrics if key in m], digits) for _, key, digits in columns]


def jax_backend() -> str:
    """The backend the children train on (they inherit JAX_PLATFORMS); no jax import for the CPU."""
    if os.environ.get("JAX_PLATFORMS") == "cpu":
        return "cpu"
    import jax
    return jax.default_backend()


def section(name: str, runs: list[dict], base: dict, seeds: list[int], notes: list[str], where: str) -> str:
    columns = [c for c in COLUMNS if c[1] != "tau.accuracy" or any("tau.accuracy" in r["metrics"] for r in runs)]
    finished = [r["metrics"] for r in runs if r["status"] == "FINISHED"]
    rows = {f"mixvae `{name}` ({runs[0]['arch'] or '?'})": finished, **base}
    summary = [[label, str(len(ms))] + cells(ms, columns) for label, ms in rows.items()]
    per_seed = [[str(r["seed"]), f"`{r['id'][:8]}`", r["status"]]
                + cells([r["metrics"]], columns + [("", "training.time_sec", 1)]) for r in runs]
    data_seeds = ", ".join(str(d) for d in sorted({r["data_seed"] for r in runs}))
    splits = "/".join(sorted({r["split"] or "?" for r in runs}))
    methods = " / ".join(sorted({r["acc_method"] for r in runs if r["acc_method"]})) or "–"
    lines = [
        f"Command: `{shlex.join(['python', 'bench/quality.py', *sys.argv[1:]])}`  ",
        f"Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}  ",
        f"Machine: {common.machine()}; JAX backend {jax_backend()}  ",
        f"Runs: {where}  ",
        f"Seeds {', '.join(map(str, seeds))} (data.seed {data_seeds}); metrics on the {splits} split, "
        "mean ± sample std over the seeds in column n (mixvae: FINISHED runs only).",
        "", common.md_table(["model", "n"] + [c[0] for c in columns], summary), "",
        f"mixvae's ACC is {methods} (Hungarian when K = number of classes, else purity); the clustering "
        "baselines use K = number of classes and Hungarian ACC; K_eff and active comp. of a baseline come from "
        "its cluster usage on the test split. For the labelled baselines ACC is the plain test accuracy of the "
        "predicted label (compare with tau.accuracy). Wall time: mixvae, the MLflow run from start to end "
        f"(compilation, evaluation and logging included); baselines, fit + test prediction. GMM reg_covar "
        f"{REG_COVAR}.",
        *[f"\n{note}" for note in dict.fromkeys(notes)],
        "", f"### {name}: mixvae per seed", "",
        common.md_table(["seed", "run", "status"] + [c[0] for c in columns] + ["training.time_sec"], per_seed),
    ]
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------


def run_preset(name: str, loaded, args, seeds: list[int], workdir: Path, uri: str) -> tuple[str | None, int]:
    """Train the seed group, compute the baselines; returns (the section's markdown or None, exit code)."""
    from mlflow import MlflowClient
    client, runs = MlflowClient(uri), []
    progress(f"# {name}: training seeds {args.seeds}")

    def on_run(run_id: str) -> None:
        run = read_run(client, run_id)
        runs.append(run)
        acc = run["metrics"].get("clustering.acc")
        progress(f"  seed {run['seed']}: {run['status']} ACC {'–' if acc is None else f'{acc:.3f}'} "
                 f"(run {run_id[:8]}, {run['metrics'].get('wall', 0):.1f} s)")

    group_id, rc = train_group(str(Path(loaded.path).resolve()), args, uri, workdir, on_run)
    if rc or not runs:
        log = (workdir / "mixvae-train.log").read_text(errors="replace").strip().splitlines()
        progress(f"  mixvae train exited {rc}; the end of its stderr:\n" + "\n".join(f"    {x}" for x in log[-15:]))
    if not runs:
        return None, rc or 1
    notes: list[str] = []
    base = baseline_rows(loaded, args.sets, runs, seeds, notes)
    where = f"seed group `{group_id}` in {uri}" if args.tracking_uri else "a temporary sqlite store, deleted afterwards"
    return section(name, runs, base, seeds, notes, where), rc


def main() -> None:
    args = parse_args()
    from mixvae.cli import _parse_seeds
    from mixvae.config import ConfigError, load_config
    try:
        seeds = _parse_seeds(args.seeds)
    except ValueError:
        usage_error(f"--seeds {args.seeds!r}: expected a list like 0,1,2 or a range like 0-4")
    presets = {}
    for preset in args.presets:
        try:
            presets[preset] = load_config(preset, args.sets)
        except ConfigError as exc:
            usage_error(exc.render())
    common.header("quality")
    worst = 0
    with tempfile.TemporaryDirectory(prefix="mixvae-quality-") as tmp:
        uri = args.tracking_uri or f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for preset, loaded in presets.items():
            title = Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset
            text, rc = run_preset(title, loaded, args, seeds, Path(tmp), uri)
            worst = max(worst, rc)
            if text is None:
                continue
            print(f"## {title}\n\n{text}\n", flush=True)
            if not args.no_write:
                common.replace_section(args.out, title, text, INTRO)
                progress(f"  wrote the section '## {title}' of {args.out}")
    sys.exit(1 if worst else 0)


if __name__ == "__main__":
    main()
