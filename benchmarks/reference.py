"""What the decoder benchmarks share: arguments, the `transformers` reference model, interleaved timing.

Imported by the benchmark scripts in this directory (run as `python benchmarks/<name>.py`, which
puts this directory on sys.path).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
import transformers

from symtune.models import hf
from symtune.models.config import DecoderConfig
from symtune.models.presets import get_preset


def parse_args(doc: str, steps: int) -> argparse.Namespace:
    """--preset, --batch, --seq and --steps (the defaults every decoder benchmark states)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--preset", default="pythia-70m")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=steps)
    return parser.parse_args()


def float32_preset_and_tokens(args: argparse.Namespace) -> tuple[DecoderConfig, np.ndarray]:
    """The preset in float32 and random tokens [batch, seq + 1] (inputs and shifted targets)."""
    config = get_preset(args.preset).replace(dtype="float32")
    return config, np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq + 1))


def torch_causal_lm(config: DecoderConfig) -> torch.nn.Module:
    """The same architecture built by transformers from our exported config, random weights, train mode."""
    fields = hf.config_to_hf(config)
    theirs_config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(theirs_config).train()


def torch_lm_loss(model: torch.nn.Module, tokens: np.ndarray) -> Callable[[], torch.Tensor]:
    """A function computing the mean next-token cross-entropy of `tokens` under `model`."""
    inputs, labels = torch.as_tensor(tokens[:, :-1]), torch.as_tensor(tokens[:, 1:])

    def loss() -> torch.Tensor:
        logits = model(inputs).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

    return loss


def timed(steps: int, **fns: Callable[[], None]) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved, after two warm-up calls each.

    Interleaving makes load from other processes hit every side alike.
    """
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}
