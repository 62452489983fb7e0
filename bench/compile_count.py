"""Compile count: one compilation per compiled function per run.

    python bench/compile_count.py [--quick] [--gpu]

With `jax_log_compiles` on, JAX logs "Finished XLA compilation of jit(NAME)" for every compilation;
this script counts those per trainer for the three compiled functions (`epoch`, `evaluate`,
`diagnostics`) and every other compilation that happens while `run()` trains. Scenarios:

1. curriculum (`curriculum.yaml` with a fast plateau rule so components unlock, kicks at T = 5, Gumbel
   temperature annealing, KL warm-up), 6 epochs; then
2. resume: a fresh trainer, `restore_last` of scenario 1's `last` checkpoint, compile, train to 12;
3. τ classifier (`tau_semisupervised.yaml`, τ updates every step, KL warm-up) with early stopping
   (patience 2).

Each scenario must show exactly 1 compilation of each function (target and hard limit).
Compilations of anything else during training are reported too (none expected: a changing schedule,
mask or temperature enters the compiled functions as an array, never as a new shape).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()

FUNCTIONS = ("epoch", "evaluate", "diagnostics")
FINISHED = re.compile(r"Finished XLA compilation of (?:jit|pjit)\((?P<name>[^)]*)\)")

CURRICULUM_FAST = [
    "curriculum.unlock.patience=1", "curriculum.unlock.min_delta=1000", "curriculum.unlock.cooldown=0",
    "curriculum.kick.epochs=2", "curriculum.stop.adaptation_epochs=3",
    "model.gumbel_temperature_anneal_epochs=8", "model.kl_warmup_epochs=4", "training.patience=null",
]


class CompileLog(logging.Handler):
    """Collects the names of the functions JAX reports as compiled."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = FINISHED.search(record.getMessage())
        if match:
            self.names.append(match.group("name"))

    def mark(self) -> int:
        return len(self.names)

    def since(self, mark: int) -> Counter:
        return Counter(self.names[mark:])


def scenario(log: CompileLog, loaded, run_dir: Path, restore_from: Path | None = None):
    """Build a trainer, (restore), compile and train; the compilations seen and the trainer."""
    mark = log.mark()
    trainer = common.make_trainer(loaded, run_dir)
    if restore_from is not None:
        trainer.restore_last(restore_from)
    trainer.compile()
    before_run = log.mark()
    result = trainer.run()
    if result.status != "FINISHED":
        raise RuntimeError(f"training ended {result.status}: {result.reason}")
    return log.since(mark), log.since(before_run), trainer, result


def report(results: common.Results, label: str, counts: Counter, during_run: Counter) -> None:
    for name in FUNCTIONS:
        results.emit(label, f"compilations.{name}", counts.get(name, 0), "count", "== 1", "== 1")
    others = {k: v for k, v in during_run.items() if k not in FUNCTIONS}
    results.emit(label, "compilations.other_during_training", sum(others.values()), "count", "== 0",
                 note=", ".join(f"{k}×{v}" for k, v in sorted(others.items())) or None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--gpu", action="store_true", help="let JAX use its default backend")
    args = parser.parse_args()
    common.header("compile_count")
    results = common.Results("compile_count")

    import jax

    from mixvae.config import load_config

    jax.config.update("jax_log_compiles", True)
    log = CompileLog()
    jax_logger = logging.getLogger("jax")
    jax_logger.addHandler(log)
    jax_logger.setLevel(logging.DEBUG)
    jax_logger.propagate = False      # keep JAX's compile chatter off the console

    first, total = (4, 8) if args.quick else (6, 12)
    with common.fresh_dir() as tmp:
        # 1. curriculum with unlocks and kicks, temperature annealing, KL warm-up.
        a = load_config("curriculum", [*CURRICULUM_FAST, f"training.max_epochs={first}"])
        counts, during, trainer, _ = scenario(log, a, tmp / "curriculum")
        events = Counter(e["event"] for e in trainer.curriculum.events)
        label = (f"curriculum, {first} epochs (fast unlock rule; events: "
                 + ", ".join(f"{k}×{v}" for k, v in sorted(events.items())) + ")")
        report(results, label, counts, during)
        if not events.get("unlock") or not trainer.kick_epochs_total:
            results.emit(label, "curriculum_exercised", 0, "flag", "== 1", "== 1",
                         note="no unlock or no kick happened: the scenario did not test what it should")

        # 2. resume from scenario 1's last checkpoint in a fresh trainer.
        b = load_config("curriculum", [*CURRICULUM_FAST, f"training.max_epochs={total}"])
        counts, during, trainer, _ = scenario(log, b, tmp / "resumed",
                                              restore_from=tmp / "curriculum" / "checkpoints" / "last")
        events = Counter(e["event"] for e in trainer.curriculum.events)
        label = (f"curriculum resumed at epoch {first}, trained to {trainer.epoch} (events: "
                 + ", ".join(f"{k}×{v}" for k, v in sorted(events.items())) + ")")
        report(results, label, counts, during)

        # 3. τ classifier with early stopping.
        c = load_config("tau_semisupervised", ["training.patience=2", "training.min_delta=0.5",
                                               f"training.max_epochs={total}", "model.kl_warmup_epochs=3"])
        counts, during, trainer, result = scenario(log, c, tmp / "tau")
        label = (f"tau_semisupervised, early stopping (patience 2): stopped early = {result.stopped_early} "
                 f"after {result.epochs_completed} epochs")
        report(results, label, counts, during)
    results.finish()


if __name__ == "__main__":
    main()
