"""Forward+backward throughput of a preset at sequence length 512: ours (JAX) against transformers (PyTorch).

Both sides run the same float32 model on the same CPU, each in a process of its own: a causal-LM
loss and its gradient for every parameter (ours with the training objective's `token_nll`). After
two warm-up calls each (compilation included), steps alternate between the two sides and each side
reports its median, so load from other processes hits both alike. The last line is one JSON
object: value (our tokens/s), unit, and ratio (ours / theirs).

    .venv/bin/python benchmarks/model_forward.py [--preset pythia-70m] [--batch 2] [--steps 7]
"""

from __future__ import annotations

import argparse
import json

from reference import Step, float32_preset_and_tokens, parse_args, throughput, torch_causal_lm, torch_lm_loss

from symtune.models.presets import param_count


def ours(args: argparse.Namespace) -> Step:
    """A jitted value_and_grad of the LM loss over our decoder's parameters."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from symtune.models import hf
    from symtune.train.lm_objective import token_nll

    config, tokens = float32_preset_and_tokens(args)
    model = nnx.eval_shape(lambda: hf.Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(model, nnx.Param)
    params = jax.jit(lambda: nnx.state(hf.Decoder(config, rngs=nnx.Rngs(0)), nnx.Param))()

    @jax.jit
    def grad_step(params, x, y):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(x)
            return jnp.mean(token_nll(logits, y))
        return jax.value_and_grad(loss_fn)(params)

    x, y = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
    return lambda: jax.block_until_ready(grad_step(params, x, y))


def theirs(args: argparse.Namespace) -> Step:
    """Loss and backward of the same architecture in transformers."""
    config, tokens = float32_preset_and_tokens(args)
    model = torch_causal_lm(config)
    loss = torch_lm_loss(model, tokens)

    def step():
        model.zero_grad(set_to_none=True)
        loss().backward()

    return step


def main() -> None:
    args = parse_args(__doc__, steps=7)
    t = throughput(args, ours, theirs)
    print(f"{args.preset} ({param_count(t.config):,} params), batch {args.batch} x {args.seq}, float32, "
          "each side in its own process on all cores")
    print(f"median of {args.steps} interleaved steps per side")
    print(f"ours   (JAX/Flax): {t.ours_seconds * 1e3:8.1f} ms/step  {t.ours_tokens_per_s:8.1f} tokens/s")
    print(f"theirs (PyTorch):  {t.theirs_seconds * 1e3:8.1f} ms/step  {t.theirs_tokens_per_s:8.1f} tokens/s")
    print(json.dumps({"name": f"{args.preset}_fwd_bwd_seq{args.seq}", "value": round(t.ours_tokens_per_s, 1),
                      "unit": "tokens/s", "ratio": round(t.ratio, 3)}))


if __name__ == "__main__":
    main()
