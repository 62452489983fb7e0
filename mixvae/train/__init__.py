"""Training: the compiled steps (``step``), the epoch loop (``loop.Trainer``) and its helpers, each
owning one concern: per-epoch schedules (``schedule``), split metrics (``evaluation``), early
stopping and the best snapshot (``early_stopping``), the component curriculum (``curriculum``),
checkpoints (``checkpoint``), summary.json (``summary``), the report's arrays (``diagnostics``),
and the abstract build of ``mixvae validate`` (``abstract``)."""
