"""Synthetic logistic-regression sequences and their curriculum, sampled on device.

A task is w ~ N(0, I)·noise_scale; its examples are x ~ N(0, I) and y ~ Bernoulli(sigmoid(x·w)).
The curriculum grows the active input dimensions (the rest are zero) and the number of examples
with the step. Sequences have exactly the current stage's number of examples (a static shape:
training compiles one step per length, see `length_stages`), so short early stages cost what
they are. Sampling is a pure function of (seed, step, row): a resumed run sees exactly the
sequences an uninterrupted one would, on any mesh and any microbatch split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gin
import jax
import jax.numpy as jnp
import numpy as np

from symtune.errors import UserError


@gin.configurable
@dataclass(frozen=True)
class SyntheticConfig:
    """The task distribution and the curriculum (defaults: the TART paper's)."""

    dims: int = 16
    max_examples: int = 258
    noise_scale: float = 10.0  # w ~ N(0, I) * noise_scale: larger = closer to separable
    dims_start: int = 4
    dims_increment: int = 4
    examples_start: int = 18
    examples_increment: int = 30
    interval: int = 1000  # steps between curriculum increments
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.dims_start <= self.dims or not 0 < self.examples_start <= self.max_examples:
            raise UserError(
                f"synthetic curriculum: need 0 < dims_start <= dims ({self.dims_start}, {self.dims}) "
                f"and 0 < examples_start <= max_examples ({self.examples_start}, {self.max_examples})")
        if self.interval <= 0 or self.dims_increment < 0 or self.examples_increment < 0:
            raise UserError("synthetic curriculum: interval must be > 0 and increments >= 0")

    def stage(self, step):
        """(active dims, active examples) at `step`; works on Python ints and traced arrays."""
        n = step // self.interval
        dims = jnp.minimum(self.dims_start + n * self.dims_increment, self.dims)
        examples = jnp.minimum(self.examples_start + n * self.examples_increment, self.max_examples)
        return dims, examples

    def lengths(self) -> tuple[int, ...]:
        """Every number of examples the curriculum uses, in order."""
        out = [self.examples_start]
        while out[-1] < self.max_examples and self.examples_increment:
            out.append(min(out[-1] + self.examples_increment, self.max_examples))
        return tuple(out)

    def length_stages(self, total_steps: int) -> list[tuple[int, int, int]]:
        """(first step, end step, examples) of each stretch of constant length up to `total_steps`."""
        lengths = self.lengths()
        bounds = [i * self.interval for i in range(len(lengths))] + [total_steps]
        return [(first, min(end, total_steps), n) for first, end, n in zip(bounds, bounds[1:], lengths)
                if first < min(end, total_steps)] if total_steps > 0 else []

    def final_step(self) -> int:
        """The first step at which both dims and examples have reached their maxima."""
        stages = [0]
        if self.dims_increment:
            stages.append(-(-(self.dims - self.dims_start) // self.dims_increment))
        if self.examples_increment:
            stages.append(-(-(self.max_examples - self.examples_start) // self.examples_increment))
        return max(stages) * self.interval


def sample_task(key: jax.Array, config: SyntheticConfig, active_dims, num_examples: int | None = None):
    """One task: xs [n, dims], ys [n] in {0, 1}, w [dims]; dims past `active_dims` are zero."""
    n = num_examples or config.max_examples
    kx, kw, ky = jax.random.split(key, 3)
    on = (jnp.arange(config.dims) < active_dims).astype(jnp.float32)
    xs = jax.random.normal(kx, (n, config.dims)) * on
    w = jax.random.normal(kw, (config.dims,)) * config.noise_scale * on
    ys = jax.random.bernoulli(ky, jax.nn.sigmoid(xs @ w)).astype(jnp.float32)
    return xs, ys, w


def sample_batch(config: SyntheticConfig, steps: jax.Array, rows: jax.Array, examples: int):
    """Tasks for `rows` [B] at `steps` [B] with `examples` (static) examples: xs [B, n, d], ys [B, n].

    Each row's key is fold_in(fold_in(key(seed), step), row), so rows can be split over devices
    and microbatches freely.
    """
    def one(step, row):
        dims, _ = config.stage(step)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), step), row)
        xs, ys, _ = sample_task(key, config, dims, examples)
        return xs, ys

    return jax.vmap(one)(steps, rows)


def step_batches(rows: Sequence[int], start_step: int):
    """Host-local batches for the jitted step: the global rows this process builds (a trainer's
    are symtune.train.mesh.process_batch_rows) and the step number.

    The sequences themselves are sampled inside the step from (seed, step, row).
    """
    rows = np.asarray(rows, dtype=np.int32)
    step = start_step
    while True:
        yield {"row": rows, "step": np.full((len(rows),), step, np.int32)}
        step += 1


def numpy_tasks(rng: np.random.Generator, count: int, dims: int, examples: int, noise_scale: float):
    """Held-out tasks sampled on the host (for evaluation): xs [N, n, d], ys [N, n]."""
    xs = rng.standard_normal((count, examples, dims)).astype(np.float32)
    w = rng.standard_normal((count, dims)).astype(np.float32) * noise_scale
    p = 0.5 * (1.0 + np.tanh(0.5 * np.einsum("bnd,bd->bn", xs, w)))  # sigmoid without overflow
    ys = (rng.random(p.shape) < p).astype(np.float32)
    return xs, ys
