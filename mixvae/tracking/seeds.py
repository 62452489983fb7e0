"""`mixvae train --seeds`: a seed_group parent run over one child run per seed."""

from __future__ import annotations

import statistics
from pathlib import Path

from mixvae import __version__
from mixvae.config import architecture_code, config_hash
from mixvae.paths import under_work_dir
from mixvae.tracking.connection import connect
from mixvae.tracking.mlflow_run import open_run
from mixvae.tracking.mlflow_writer import MlflowWriter
from mixvae.tracking_uri import resolve_tracking_uri


def open_seed_group(loaded, cli_uri: str | None, experiment_from_cli: bool, seeds: list[int]) -> MlflowWriter:
    cfg = loaded.config
    uri = resolve_tracking_uri(cli_uri, cfg.tracking.uri)[0]
    arch = architecture_code(cfg)
    tags = {"mixvae.kind": "seed_group", "mixvae.version": __version__, "mixvae.architecture": arch,
            "mixvae.config_hash_noseed": config_hash(cfg, with_seed=False), "mixvae.config_name": loaded.name,
            "mixvae.seeds": ",".join(map(str, seeds))}
    name = f"{cfg.tracking.run_name or f'{cfg.experiment.name}-{arch}'}-seeds"
    return open_run(uri=uri, experiment_name=cfg.tracking.experiment_name, run_name=name,
                    experiment_from_cli=experiment_from_cli, tags=tags,
                    description=cfg.experiment.description or None)


def seed_aggregates(children: list[dict[str, float]]) -> dict[str, float]:
    """seed_mean/<key>, seed_std/<key> (ddof 1) for keys in ≥ 2 finished children, plus seed_n."""
    out: dict[str, float] = {"seed_n": float(len(children))}
    keys = sorted({k for c in children for k in c})
    for key in keys:
        values = [c[key] for c in children if key in c]
        if len(values) >= 2:
            out[f"seed_mean/{key}"] = float(statistics.fmean(values))
            out[f"seed_std/{key}"] = float(statistics.stdev(values))
    return out


def close_seed_group(parent: MlflowWriter, child_ids: list[str], codes: list[int], report_dir: str,
                     console) -> Path | None:
    """Aggregate the finished children, write COMPARE.md, end the parent (FINISHED only if all finished)."""
    from mixvae.tracking.record import load_run

    client = connect(parent.uri)
    finished = []
    for run_id in child_ids:
        run = client.get_run(run_id)
        if run.info.status == "FINISHED":
            finished.append({k: v for k, v in run.data.metrics.items() if "/" not in k})
    parent.log_summary(seed_aggregates(finished))
    report = None
    if len(child_ids) >= 2:
        try:
            from mixvae.report import build_compare
            records = [load_run(i, parent.uri) for i in child_ids]
            out = under_work_dir(report_dir) / parent.run_id
            report = build_compare(records, out)
            parent.log_artifacts(out)
        except Exception as exc:  # the children are complete runs; the comparison is a convenience
            console.error(f"seed group comparison failed: {type(exc).__name__}: {exc}")
    all_ok = bool(codes) and all(c == 0 for c in codes) and len(finished) == len(codes)
    parent.set_status("FINISHED" if all_ok else "FAILED", None if all_ok else "not every seed run finished")
    parent.close()
    return report
