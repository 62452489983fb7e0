"""Host-side schedules of one epoch: the KL warm-up factors, the Gumbel temperature, the warm-start
weight and the curriculum's kick overrides, gathered into the ``Schedule`` the compiled epoch takes.

Everything here is plain arithmetic on the epoch number, so changing a factor never recompiles.
"""

from __future__ import annotations

import numpy as np

from mixvae.metrics import keys as mk
from mixvae.train.step import Schedule

F32 = np.float32

# Schedule values logged as train/ keys when their key applies to the configuration.
_LOGGED = ("training.gumbel_temperature", "training.kl_z_scale", "training.cluster_init_scale",
           "training.kl_c_scale")


def rho(n: int, length: int) -> float:
    """ρ(n, N) = min(1, n / N), the linear warm-up factor (1 when N = 0)."""
    return 1.0 if length == 0 else min(1.0, n / length)


def temperature(cfg, n: int) -> float:
    """The Gumbel temperature T_n of epoch n, annealed linearly."""
    m = cfg.model
    if m.gumbel_temperature_anneal_epochs == 0:
        return m.gumbel_temperature
    frac = min(1.0, (n - 1) / m.gumbel_temperature_anneal_epochs)
    return m.gumbel_temperature + (m.gumbel_temperature_min - m.gumbel_temperature) * frac


def example_schedule(num_components: int) -> Schedule:
    """A schedule of the right shapes and types, for compiling ahead of time."""
    one = np.float32(1.0)
    return Schedule(kl_z_scale=one, kl_c_scale=one, temperature=one, straight_through=one,
                    active_mask=np.ones(num_components, F32), kick_bias=np.zeros(num_components, F32),
                    cluster_init_scale=one)


def epoch_schedule(cfg, n: int, plan, num_labeled: int) -> tuple[Schedule, dict[str, float]]:
    """Epoch n's schedule under the curriculum's ``plan``, and the values to log (applicable keys only).

    β is the latent-KL warm-up, κ the component-regulariser warm-up (scaled down during a kick), γ the
    warm-start clustering weight: 1 in epoch 1, falling linearly to 0.
    """
    m, kick = cfg.model, cfg.curriculum.kick
    beta = rho(n, m.kl_warmup_epochs)
    kappa = rho(n, m.kl_c_anneal_epochs)
    temp = temperature(cfg, n)
    straight_through = 1.0 if m.use_straight_through_gumbel else 0.0
    if plan.kick:
        kappa *= kick.regularizer_scale
        if m.use_gumbel_softmax:
            temp = kick.gumbel_temperature
        if kick.disable_straight_through:
            straight_through = 0.0
    gamma = 1.0 - rho(n - 1, m.cluster_init_epochs)
    schedule = Schedule(kl_z_scale=np.float32(beta), kl_c_scale=np.float32(kappa), temperature=np.float32(temp),
                        straight_through=np.float32(straight_through), active_mask=plan.active_mask,
                        kick_bias=plan.kick_bias, cluster_init_scale=np.float32(gamma))
    values = {"training.gumbel_temperature": temp, "training.kl_z_scale": beta,
              "training.cluster_init_scale": gamma, "training.kl_c_scale": kappa}
    logged = {key: float(values[key]) for key in _LOGGED if mk.KEYS[key].applies(cfg, num_labeled) is None}
    return schedule, logged
