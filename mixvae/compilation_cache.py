"""JAX's persistent compilation cache for mixvae's commands.

Compiling a run's functions (and the model's initialisers, one small program per layer shape) takes
seconds on a laptop CPU. XLA's results are kept on disk, keyed by the program and the compiler's
flags, so a later run with the same shapes loads them instead of compiling: the same executables,
the same numbers. The cache lives outside the working directory, in `$MIXVAE_COMPILATION_CACHE`,
else `$XDG_CACHE_HOME/mixvae/jax`, else `~/.cache/mixvae/jax`; `MIXVAE_COMPILATION_CACHE=off` turns
it off. JAX keeps it under `MAX_BYTES` by evicting the least recently used entries.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "MIXVAE_COMPILATION_CACHE"
MAX_BYTES = 1 << 30
OFF = ("", "0", "off", "false", "no")


def directory() -> Path | None:
    """Where the cache goes, or None when it is turned off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mixvae" / "jax"


def enable() -> Path | None:
    """Point JAX's persistent cache at ``directory()`` (every program, however fast it compiles);
    call before the first compilation. → the directory, or None (off, or it cannot be created)."""
    where = directory()
    if where is None:
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import jax
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return where
