"""Short names of a config: its hash, its architecture code and the one-line model summary."""

from __future__ import annotations

import hashlib
import json

from mixvae.config.flat import to_dict
from mixvae.config.schema import Config


def config_hash(cfg: Config, with_seed: bool = True) -> str:
    """What the run computes, hashed: neither naming, tracking, the device count nor the decode chunks
    (one device or several, one chunk or several, give the same results within float tolerance, and
    the hash of every config stays the same), nor the neighbour term's keys while it is off, nor the
    decoder's dtype while it is the default float32."""
    d = to_dict(cfg)
    d.pop("experiment")
    d.pop("tracking")
    d["training"].pop("devices")
    d["training"].pop("decode_chunks")
    if d["model"]["neighbour_weight"] == 0:  # the term is off: its keys change nothing (older hashes hold)
        d["model"].pop("neighbour_weight")
        d["model"].pop("neighbour_count")
    if d["training"]["decode_dtype"] == "float32":  # the default: older hashes hold
        d["training"].pop("decode_dtype")
    if not with_seed:
        d["training"].pop("seed")
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def architecture_code(cfg: Config, num_labeled: int | None = None) -> str:
    """The architecture code `<prior>_<classifier>_<decoder>` (docs/tracking.md)."""
    m = cfg.model
    k = m.num_components
    if m.prior_type == "standard":
        prior = "std"
    elif m.prior_type == "mixture":
        prior = f"mix{k}"
    elif m.prior_type == "geometric_mog":
        prior = f"geo{k}-{m.geometric_arrangement}"
    else:
        prior = f"vamp{k}-{'km' if m.vamp_pseudo_init_method == 'kmeans' else 'rand'}"
    if m.dirichlet_alpha is not None and m.learnable_pi:
        prior += "-dir"
    if m.latent_layout == "decentralized":
        prior += "-dec"
    if m.use_gumbel_softmax:
        prior += "-gbl" if m.use_straight_through_gumbel else "-gbls"
    if m.top_m_active and m.is_component_decoding:
        prior += f"-top{m.top_m_gating}"
    if cfg.curriculum.enabled:
        prior += "-cur"
    n = cfg.data.num_labeled if num_labeled is None else num_labeled
    clf = "tau" if m.use_tau_classifier else "head" if m.head_trained(n) else "unsup"
    dec = {"cin": "cin", "film": "film", "concat": "cat", "none": "plain"}[m.decoder_conditioning]
    if m.use_heteroscedastic_decoder:
        dec += "-het" if m.sigma_granularity == "pixel" else "-heti"
    elif m.reconstruction_loss == "mse":
        dec += "-mse"
    if m.decoder_type == "conv":
        dec += "-conv"
    return f"{prior}_{clf}_{dec}"


def model_summary_line(cfg: Config) -> str:
    """`mixture K=10 decentralized D=2 · dense/dense · cin · Gumbel-ST T 1.0→0.5 · bce` (header line)."""
    m = cfg.model
    parts = []
    if m.prior_type == "standard":
        parts.append(f"standard D={m.latent_dim}")
    else:
        parts.append(f"{m.prior_type} K={m.num_components} {m.latent_layout} D={m.latent_dim}")
    parts.append(f"{m.encoder_type}/{m.decoder_type}")
    parts.append(m.decoder_conditioning)
    if m.use_gumbel_softmax:
        kind = "Gumbel-ST" if m.use_straight_through_gumbel else "Gumbel"
        parts.append(f"{kind} T {m.gumbel_temperature:g}→{m.gumbel_temperature_min:g}")
    if m.top_m_active:
        parts.append(f"top-{m.top_m_gating}")
    lik = m.reconstruction_loss
    if m.use_heteroscedastic_decoder:
        lik = f"heteroscedastic ({m.sigma_granularity} σ)"
    parts.append(lik)
    return " · ".join(parts)
