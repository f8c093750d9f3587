"""One training step of the `tart-paper` head: ours (symtune Trainer, JAX) against the same
architecture as a `transformers` GPT2Model training step in PyTorch, each side in a process of
its own on this CPU.

Both sides: 12 layers, 8 heads, width 256, float32, batch 32 sequences of 258 (x, y) examples
(516 tokens), binary cross-entropy at the x positions, Adam at 1e-4, no dropout. Ours samples its
sequences on device inside the step (as in training); PyTorch gets them precomputed. After two
warm-up steps each, steps alternate between the sides (medians reported). The last line
printed is one JSON object: `value` = our seconds per step, `ratio` = PyTorch time / ours
(> 1: ours is faster). Target: ratio >= 1.0.
"""

from __future__ import annotations

import argparse
import functools
import json
import os

from reference import steps_run, timed

BATCH, EXAMPLES = 32, 258
TARGET = 1.0


def ours_step(steps: int):
    """A function taking one training step of our head."""
    import jax

    from symtune.train.mesh import MeshConfig
    from symtune.train.optim import OptimizerConfig
    from symtune.train.trainer import TrainerConfig
    from tart.head import head_config
    from tart.synthetic import SyntheticConfig, step_batches
    from tart.train import build_trainer

    synthetic = SyntheticConfig(dims_start=16, examples_start=EXAMPLES)
    trainer = build_trainer(head_config("tart-paper"), synthetic, EXAMPLES, MeshConfig(),
                            TrainerConfig(steps=steps_run(steps)),
                            OptimizerConfig(learning_rate=1e-4, b2=0.999, grad_clip_norm=None))
    state = trainer.init_state()
    batches = step_batches(BATCH, 0)

    def step():
        nonlocal state
        state, metrics = trainer.step(state, trainer.global_batch(next(batches)))
        jax.block_until_ready((state, metrics))

    return step


def torch_step():
    """A function taking one training step of the same architecture in PyTorch."""
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_positions=2 * EXAMPLES, n_embd=256, n_layer=12, n_head=8, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
    read_in, backbone, read_out = torch.nn.Linear(16, 256), GPT2Model(config), torch.nn.Linear(256, 1)
    modules = torch.nn.ModuleList([read_in, backbone, read_out]).train()
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-4)
    xs = torch.randn(BATCH, EXAMPLES, 16)
    ys = (torch.rand(BATCH, EXAMPLES) > 0.5).float()
    y_tokens = torch.zeros_like(xs)
    y_tokens[..., 0] = ys
    zs = torch.stack([xs, y_tokens], dim=2).reshape(BATCH, 2 * EXAMPLES, 16)

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = read_out(backbone(inputs_embeds=read_in(zs)).last_hidden_state)[:, ::2, 0]
        torch.nn.functional.binary_cross_entropy_with_logits(logits, ys).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side after two warm-ups (median)")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    median = timed(args.steps, ours=functools.partial(ours_step, args.steps), theirs=torch_step)
    ours, theirs = median["ours"], median["theirs"]
    print(f"tart-paper head, batch {BATCH} x {EXAMPLES} examples, median of {args.steps} interleaved "
          f"steps per side: ours {ours:.2f}s/step, PyTorch GPT2Model {theirs:.2f}s/step")
    print(json.dumps({
        "benchmark": "tart_step", "value": round(ours, 3), "unit": "s/step",
        "ratio": round(theirs / ours, 3), "reference": "transformers GPT2Model + Adam step, PyTorch CPU",
        "reference_value": round(theirs, 3), "target": TARGET, "meets_target": theirs / ours >= TARGET,
    }))


if __name__ == "__main__":
    main()
