"""Training throughput of a ~100M preset at sequence length 512: our Trainer against a plain
`transformers` + PyTorch AdamW loop, each in a process of its own on this CPU.

Both sides take full optimizer steps (forward, backward, gradient clipping to 1.0, AdamW) on the
same float32 model and batch; after two warm-up steps each (compilation included) the steps
alternate between the sides and each reports its median, so other load hits both alike. `mfu` is
our analytic training FLOPs per second over a peak measured here: a 2048x2048 float32 matmul in
JAX. The last line is one JSON object: value (our tokens/s), unit, ratio (ours / PyTorch) and mfu.

    .venv/bin/python benchmarks/train_step.py [--preset pythia-70m] [--batch 2] [--steps 5]
"""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np
from reference import (Step, float32_preset_and_tokens, parse_args, steps_run, throughput, timed, torch_causal_lm,
                       torch_lm_loss)

from symtune.models.presets import flops_per_token, param_count

LEARNING_RATE = 1e-4
PEAK_MATMUL = 2048


def matmul(n: int) -> Step:
    """An n x n float32 matmul in JAX."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    product = jax.jit(lambda x: x @ x)
    return lambda: product(a).block_until_ready()


def lm_batch(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """One unpacked batch of seqio decoder features, every target token weighted."""
    batch, length = tokens.shape[0], tokens.shape[1] - 1
    return {
        "decoder_input_tokens": tokens[:, :-1].astype(np.int32),
        "decoder_target_tokens": tokens[:, 1:].astype(np.int32),
        "decoder_loss_weights": np.ones((batch, length), np.int32),
        "decoder_segment_ids": np.ones((batch, length), np.int32),
        "decoder_positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
    }


def ours(args: argparse.Namespace) -> Step:
    """One step of the framework's Trainer (jitted step with donation, AdamW, clipping, metrics)."""
    import jax

    from symtune.models.decoder import Decoder
    from symtune.train.lm_objective import lm_loss
    from symtune.train.mesh import MeshConfig, logical_rules, make_mesh
    from symtune.train.optim import OptimizerConfig
    from symtune.train.trainer import Trainer, TrainerConfig

    config, tokens = float32_preset_and_tokens(args)
    mesh_config = MeshConfig(data=1)
    trainer = Trainer(
        lambda rngs: Decoder(config, rngs=rngs), lm_loss,
        mesh=make_mesh(mesh_config, devices=jax.devices()[:1]), rules=logical_rules(mesh_config.rules),
        config=TrainerConfig(steps=steps_run(args.steps)),
        optimizer=OptimizerConfig(name="adamw", learning_rate=LEARNING_RATE, grad_clip_norm=1.0),
        flops_per_token=flops_per_token(config, args.seq),
    )
    batch = trainer.global_batch(lm_batch(tokens))
    state = trainer.init_state()

    def step():
        nonlocal state
        state, metrics = trainer.step(state, batch)
        jax.block_until_ready(metrics["loss"])

    return step


def theirs(args: argparse.Namespace) -> Step:
    """One step of a transformers model with torch's AdamW and gradient clipping."""
    import torch

    config, tokens = float32_preset_and_tokens(args)
    model = torch_causal_lm(config)
    loss = torch_lm_loss(model, tokens)
    adamw = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), eps=1e-8,
                              weight_decay=0.0)

    def step():
        adamw.zero_grad(set_to_none=True)
        loss().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        adamw.step()

    return step


def main() -> None:
    args = parse_args(__doc__, steps=5)
    t = throughput(args, ours, theirs)
    peak = 2 * PEAK_MATMUL**3 / timed(10, matmul=functools.partial(matmul, PEAK_MATMUL))["matmul"]
    mfu = flops_per_token(t.config, args.seq) * t.ours_tokens_per_s / peak
    print(f"{args.preset} ({param_count(t.config):,} params), batch {args.batch} x {args.seq}, float32, "
          f"AdamW; each side in its own process; matmul peak {peak / 1e9:.0f} GFLOP/s")
    print(f"median of {args.steps} interleaved steps per side")
    print(f"ours   (symtune Trainer): {t.ours_seconds * 1e3:8.1f} ms/step  {t.ours_tokens_per_s:8.1f} tokens/s  "
          f"MFU {mfu:.1%}")
    print(f"theirs (PyTorch loop):    {t.theirs_seconds * 1e3:8.1f} ms/step  {t.theirs_tokens_per_s:8.1f} tokens/s")
    print(json.dumps({"name": f"{args.preset}_train_step_seq{args.seq}", "value": round(t.ours_tokens_per_s, 1),
                      "unit": "tokens/s", "ratio": round(t.ratio, 3),
                      "mfu": round(mfu, 4)}))


if __name__ == "__main__":
    main()
