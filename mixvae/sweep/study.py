"""The Optuna study a sweep runs in: its storage (in memory, a journal file, a database), its sampler and
pruner, the parent run all workers share, and the rule that the study gets N trials in all.

Several `mixvae sweep` processes with the same `--storage` and study name share one study. Optuna numbers
trials atomically in its storage, which is what the coordination relies on:

- the worker that gets trial 0 creates the MLflow parent run and stores its id in the study's user
  attributes; the others wait for it;
- a worker asks for a trial only while the study has fewer than N; when two workers race for the last one,
  the loser's trial (number ≥ N) is told FAIL at once with the user attribute ``mixvae.skipped`` and no run.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

PARENT_ATTR = "mixvae.parent_run_id"
SKIPPED_ATTR = "mixvae.skipped"
PARENT_WAIT_S = 300.0


class StudyError(Exception):
    """The storage or the study cannot be used as asked (exit 2)."""


@dataclass(frozen=True)
class StudySettings:
    name: str
    storage: str | None          # None: in memory (one process)
    direction: str               # minimize | maximize
    pruner: str                  # median | none
    startup_trials: int
    warmup_epochs: int
    seed: int


def quiet_optuna() -> None:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage_for(url: str | None):
    """Optuna's storage for ``--storage``: a file path (or ``journal:PATH``) is a journal file shared over a
    filesystem; ``sqlite:///…``, ``postgresql://…``, ``mysql://…`` are databases; None keeps the study in memory."""
    if url is None:
        return None
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    if "://" in url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as exc:
            raise StudyError(f"--storage {redacted(url)}: Optuna cannot use this database: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    path = url.removeprefix("journal:")
    try:
        return JournalStorage(JournalFileBackend(path))
    except OSError as exc:
        raise StudyError(f"--storage {url}: the journal file cannot be opened: {exc}") from None


def redacted(url: str | None) -> str:
    from mixvae.tracking_uri import redact_uri
    return redact_uri(url) if url else "in-memory"


def open_study(settings: StudySettings):
    """Create the study, or join the one of that name in the storage (its direction must agree)."""
    import optuna
    quiet_optuna()
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials,
                                          n_warmup_steps=settings.warmup_epochs)
              if settings.pruner == "median" else optuna.pruners.NopPruner())
    sampler = optuna.samplers.TPESampler(seed=settings.seed)
    storage = storage_for(settings.storage)
    try:
        study = optuna.create_study(study_name=settings.name, storage=storage, direction=settings.direction,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    except Exception as exc:
        raise StudyError(f"study '{settings.name}' in {redacted(settings.storage)}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    existing = study.direction.name.lower()
    if existing != settings.direction:
        raise StudyError(f"study '{settings.name}' in {redacted(settings.storage)} already exists and "
                         f"{existing}s; this sweep asks to {settings.direction}")
    return study


def counts(study) -> dict[str, int]:
    """Trials by state, not counting the ones skipped for being over the total."""
    from optuna.trial import TrialState
    out = {"complete": 0, "pruned": 0, "failed": 0, "running": 0}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "running"}
    for t in study.get_trials(deepcopy=False):
        if SKIPPED_ATTR not in t.user_attrs:
            out[names[t.state]] += 1
    return out


def next_trial(study, total: int, deadline: float | None):
    """A new trial while the study has fewer than ``total`` and time is left; else None."""
    from optuna.trial import TrialState
    if deadline is not None and time.monotonic() >= deadline:
        return None
    if len(study.get_trials(deepcopy=False)) >= total:
        return None
    trial = study.ask()
    if trial.number >= total:  # another worker took the last trial between the count and the ask
        trial.set_user_attr(SKIPPED_ATTR, f"over the sweep's total of {total} trials")
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


def shared_parent(study, first_trial, create) -> str:
    """The parent run id of this study: created by whoever holds trial 0, waited for by everyone else."""
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent:
        return parent
    if first_trial is not None and first_trial.number == 0:
        parent = create()
        study.set_user_attr(PARENT_ATTR, parent)
        return parent
    waited = time.monotonic()
    while time.monotonic() - waited < PARENT_WAIT_S:
        time.sleep(0.5)
        if parent := study.user_attrs.get(PARENT_ATTR):
            return parent
    raise StudyError(f"study '{study.study_name}': the worker holding trial 0 has not created the parent run "
                     f"within {PARENT_WAIT_S:.0f} s; is it still running?")


def best_trial(study):
    """The best complete trial, or None."""
    from optuna.trial import TrialState
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    pick = min if study.direction.name == "MINIMIZE" else max
    return pick(done, key=lambda t: t.value)


