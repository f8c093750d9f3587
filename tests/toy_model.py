"""A small regression model with logical axis names, for testing the trainer without a decoder."""

import jax.numpy as jnp
import numpy as np
from flax import nnx


class ToyRegressor(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, width: int = 16, hidden: int = 32):
        init = nnx.initializers.normal(0.1)
        self.w_in = nnx.Param(nnx.with_partitioning(init, ("embed", "mlp"))(rngs.params(), (width, hidden)))
        self.w_out = nnx.Param(nnx.with_partitioning(init, ("mlp", "embed"))(rngs.params(), (hidden, width)))
        self.scale = nnx.Param(nnx.with_partitioning(nnx.initializers.ones, ("norm",))(rngs.params(), (width,)))

    def __call__(self, x):
        return (jnp.tanh(x @ self.w_in[...]) @ self.w_out[...]) * self.scale[...]


def toy_loss(model, batch, key):
    del key
    err = ((model(batch["x"]) - batch["y"]) ** 2).sum(-1)
    return {"loss": (err * batch["w"]).sum(), "weight": batch["w"].sum(),
            "tokens": (batch["w"] > 0).sum().astype(jnp.float32)}


def toy_batch(rows: int = 64, width: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 3, size=(rows,)).astype(np.float32)  # uneven weights, some zero
    return {
        "x": rng.standard_normal((rows, width), dtype=np.float32),
        "y": rng.standard_normal((rows, width), dtype=np.float32),
        "w": w,
    }
