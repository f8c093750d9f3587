"""Optimizers (AdamW, Adafactor) and learning-rate schedules from one gin-bound config."""

from __future__ import annotations

import re
from dataclasses import dataclass

import gin
import jax
import jax.numpy as jnp
import optax

from symtune.errors import UserError

SCHEDULES = ("constant", "cosine", "rsqrt", "linear")
OPTIMIZERS = ("adamw", "adafactor")


@gin.configurable
@dataclass(frozen=True)
class OptimizerConfig:
    """What to optimise with. `decay_steps` defaults to the run's total steps."""

    name: str = "adamw"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int | None = None
    final_lr_fraction: float = 0.0  # cosine/linear end value as a fraction of the peak
    weight_decay: float = 0.0
    # Parameters whose path matches are not decayed (biases, norm scales).
    no_decay_pattern: str = r"(bias|scale)"
    grad_clip_norm: float | None = 1.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    # Adafactor (factored second moments); defaults follow T5X's Adafactor.
    adafactor_decay_rate: float = 0.8
    adafactor_min_dim_to_factor: int = 128
    adafactor_parameter_scale: bool = True

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.name!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if self.learning_rate <= 0 or self.warmup_steps < 0:
            raise UserError("learning_rate must be > 0 and warmup_steps >= 0")


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to the peak, then the configured shape."""
    peak, warmup = config.learning_rate, config.warmup_steps
    horizon = max((config.decay_steps or total_steps) - warmup, 1)
    end = peak * config.final_lr_fraction
    if config.schedule == "constant":
        main = optax.constant_schedule(peak)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(peak, horizon, alpha=config.final_lr_fraction)
    elif config.schedule == "linear":
        main = optax.linear_schedule(peak, end, horizon)
    else:  # rsqrt: peak / sqrt(step / timescale) once past the timescale (the warmup, or 1)
        timescale = max(warmup, 1)
        main = lambda count: peak * jnp.sqrt(timescale / jnp.maximum(count + warmup, timescale))  # noqa: E731
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def decay_mask(params, pattern: str):
    """True for parameters that get weight decay: those whose path does not match `pattern`."""
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: regex.search(jax.tree_util.keystr(path)) is None, params
    )


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """Gradient clipping, then AdamW or Adafactor on the configured schedule."""
    schedule = make_schedule(config, total_steps)
    mask = lambda params: decay_mask(params, config.no_decay_pattern)  # noqa: E731
    if config.name == "adamw":
        core = optax.adamw(
            schedule, b1=config.b1, b2=config.b2, eps=config.eps,
            weight_decay=config.weight_decay, mask=mask,
        )
    else:
        core = optax.adafactor(
            schedule,
            min_dim_size_to_factor=config.adafactor_min_dim_to_factor,
            decay_rate=config.adafactor_decay_rate,
            multiply_by_parameter_scale=config.adafactor_parameter_scale,
            weight_decay_rate=config.weight_decay or None,
            weight_decay_mask=mask,
        )
    if config.grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), core)
    return core
