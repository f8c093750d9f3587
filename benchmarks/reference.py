"""What the decoder benchmarks share: arguments, the `transformers` reference model, timing sides apart.

Imported by the benchmark scripts in this directory (run as `python benchmarks/<name>.py`, which
puts this directory on sys.path).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import statistics
import time
import traceback
from typing import Callable, NamedTuple

import numpy as np

from symtune.models.config import DecoderConfig
from symtune.models.presets import get_preset

Step = Callable[[], None]


def parse_args(doc: str, steps: int) -> argparse.Namespace:
    """--preset, --batch, --seq and --steps (the defaults every decoder benchmark states)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--preset", default="pythia-70m")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=steps)
    return parser.parse_args()


def float32_preset(args: argparse.Namespace) -> DecoderConfig:
    """The preset in float32."""
    return get_preset(args.preset).replace(dtype="float32")


def float32_preset_and_tokens(args: argparse.Namespace) -> tuple[DecoderConfig, np.ndarray]:
    """The preset in float32 and random tokens [batch, seq + 1] (inputs and shifted targets)."""
    config = float32_preset(args)
    return config, np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq + 1))


def torch_causal_lm(config: DecoderConfig):
    """The same architecture built by transformers from our exported config, random weights, train mode."""
    import torch
    import transformers

    from symtune.models import hf

    fields = hf.config_to_hf(config)
    theirs_config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(theirs_config).train()


def torch_lm_loss(model, tokens: np.ndarray):
    """A function computing the mean next-token cross-entropy of `tokens` under `model` (a torch scalar)."""
    import torch

    inputs, labels = torch.as_tensor(tokens[:, :-1]), torch.as_tensor(tokens[:, 1:])

    def loss():
        logits = model(inputs).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

    return loss


class Throughput(NamedTuple):
    """Both sides of a decoder benchmark: median seconds per step over `tokens` tokens a step."""

    config: DecoderConfig
    tokens: int
    ours_seconds: float
    theirs_seconds: float

    @property
    def ours_tokens_per_s(self) -> float:
        return self.tokens / self.ours_seconds

    @property
    def theirs_tokens_per_s(self) -> float:
        return self.tokens / self.theirs_seconds

    @property
    def ratio(self) -> float:
        """Our throughput over the reference's."""
        return self.theirs_seconds / self.ours_seconds


def throughput(args: argparse.Namespace, ours: Callable[[argparse.Namespace], Step],
               theirs: Callable[[argparse.Namespace], Step]) -> Throughput:
    """Times our side and the reference, both built from the parsed arguments, over batch x seq tokens."""
    median = timed(args.steps, ours=functools.partial(ours, args), theirs=functools.partial(theirs, args))
    return Throughput(float32_preset(args), args.batch * args.seq, median["ours"], median["theirs"])


WARMUPS = 2  # steps each side takes before the turns start
PER_TURN = 2  # an untimed step, then the timed one


def steps_run(timed_steps: int) -> int:
    """Steps `timed` takes of each side (a Trainer's step budget must cover them)."""
    return WARMUPS + PER_TURN * timed_steps


def timed(steps: int, **sides: Callable[[], Step]) -> dict[str, float]:
    """Median seconds per step of each side, each side built and stepped in a process of its own.

    `sides` maps a name to a picklable factory (a module-level function, or a functools.partial of
    one) that builds the side and returns its step function. Apart, because in one process each
    side's memory traffic lands on the other (our tart-paper step took 12.1 s alone and 18.2 s
    alternating with PyTorch steps in one process). After two warm-up steps each, the sides take
    turns, so load from other processes hits every side alike; each turn is an untimed step and a
    timed one, as a step straight after a long idle spell is not what training runs (ours took
    16.5 s after 10 s idle, 11.7 s back to back: the host had reclaimed the memory XLA:CPU maps
    anew for every step's temporaries; see symtune.hostenv.retain_freed_memory).
    """
    context = multiprocessing.get_context("spawn")
    workers = {}
    for name, factory in sides.items():
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(factory, theirs), daemon=True)
        process.start()
        workers[name] = (process, ours)
    try:
        for name, (_, conn) in workers.items():
            _reply(name, conn)  # built and warmed up
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(steps):
            for name, (_, conn) in workers.items():
                for _ in range(PER_TURN):
                    conn.send("step")
                    seconds = _reply(name, conn)
                times[name].append(seconds)
    finally:
        for process, conn in workers.values():
            if process.is_alive():
                conn.send(None)
            process.join(timeout=60)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _serve(factory: Callable[[], Step], conn) -> None:
    try:
        step = factory()
        for _ in range(WARMUPS):
            step()
        conn.send(("ok", None))
        while conn.recv() is not None:
            start = time.perf_counter()
            step()
            conn.send(("ok", time.perf_counter() - start))
    except BaseException:  # the parent re-raises it with the side's name
        conn.send(("error", traceback.format_exc()))


def _reply(name: str, conn):
    status, value = conn.recv()
    if status == "error":
        raise RuntimeError(f"benchmark side {name!r} failed:\n{value}")
    return value
