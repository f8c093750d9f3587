"""The matmuls of one forward+backward of a preset: XLA:CPU's dots (ours) against PyTorch's mm (MKL).

`model_forward.py` times whole steps; this isolates the part of them that neither framework's
code decides, the float32 matrix products, to show how much of the gap between the two steps is
the matmul library. For every weight of the preset ([D, H*hd] q, [D, K*hd] k and v, [H*hd, D] o,
the MLP's, the LM head) and every layer it runs the three products of a training step: the
forward x @ w, the input gradient g @ w^T and the weight gradient x^T @ g, over batch x seq tokens,
each layer on arrays of its own. Each side runs in a process of its own, turns alternate (see
`reference.timed`). The last line is one JSON object: value (our GFLOP/s), unit, and ratio
(ours / theirs).

    .venv/bin/python benchmarks/cpu_dots.py [--preset pythia-70m] [--batch 2] [--seq 512] [--steps 7]
"""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np
from reference import Step, float32_preset, parse_args, timed

from symtune.models.config import DecoderConfig


def weight_shapes(config: DecoderConfig) -> list[tuple[int, int]]:
    """[in, out] of every matmul weight of the decoder, layer by layer, then the LM head."""
    d, attention = config.embed_dim, config.num_heads * config.head_dim
    kv = config.num_kv_heads * config.head_dim
    mlp = [(d, config.mlp_dim)] * (2 if config.gated_mlp else 1) + [(config.mlp_dim, d)]
    layer = [(d, attention), (d, kv), (d, kv), (attention, d), *mlp]
    return layer * config.num_layers + [(d, config.vocab_size)]


def operands(args: argparse.Namespace) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(x [N, in], w [in, out], g [N, out]) per weight, N = batch x seq tokens."""
    rng = np.random.default_rng(0)
    tokens = args.batch * args.seq
    return [tuple(rng.standard_normal(shape, dtype=np.float32) for shape in ((tokens, i), (i, o), (tokens, o)))
            for i, o in weight_shapes(float32_preset(args))]


def flops(shapes: list[tuple[int, int]], tokens: int) -> float:
    """Floating-point operations of one step: three products of 2 * tokens * in * out per weight."""
    return sum(6 * tokens * i * o for i, o in shapes)


def ours(args: argparse.Namespace) -> Step:
    """All products in one jitted XLA:CPU computation."""
    import jax
    import jax.numpy as jnp

    arrays = jax.tree.map(jnp.asarray, operands(args))

    @jax.jit
    def products(arrays):
        return [(x @ w, g @ w.T, x.T @ g) for x, w, g in arrays]

    return lambda: jax.block_until_ready(products(arrays))


def theirs(args: argparse.Namespace) -> Step:
    """The same products with torch.mm."""
    import torch

    arrays = [tuple(map(torch.from_numpy, triple)) for triple in operands(args)]

    def step():
        with torch.no_grad():
            for x, w, g in arrays:
                torch.mm(x, w), torch.mm(g, w.t()), torch.mm(x.t(), g)

    return step


def main() -> None:
    args = parse_args(__doc__, steps=7)
    median = timed(args.steps, ours=functools.partial(ours, args), theirs=functools.partial(theirs, args))
    shapes, tokens = weight_shapes(float32_preset(args)), args.batch * args.seq
    work = flops(shapes, tokens)
    print(f"{args.preset}: {len(shapes) * 3} float32 products over {tokens} tokens, {work / 1e9:.1f} GFLOP per step")
    print(f"ours   (XLA:CPU dot): {median['ours'] * 1e3:8.1f} ms/step  {work / median['ours'] / 1e9:6.1f} GFLOP/s")
    print(f"theirs (PyTorch mm):  {median['theirs'] * 1e3:8.1f} ms/step  {work / median['theirs'] / 1e9:6.1f} GFLOP/s")
    print(json.dumps({"name": f"{args.preset}_dots_seq{args.seq}", "value": round(work / median["ours"] / 1e9, 1),
                      "unit": "GFLOP/s", "ratio": round(median["theirs"] / median["ours"], 3)}))


if __name__ == "__main__":
    main()
