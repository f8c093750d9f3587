"""Scoring candidate continuations (rank classification) and greedy decoding with a KV cache.

Both take token ids (lists of ints), pad them into fixed shapes and run one jitted function per
shape. Inside `jax.set_mesh(mesh)` + logical rules they run on the sharded model, with the batch
padded to a multiple of the devices the batch axis is split over.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import PartitionSpec

from symtune.errors import UserError
from symtune.models.decoder import Decoder
from symtune.models.layers import mesh_is_set

Tokens = Sequence[int]


@dataclass(frozen=True)
class Scores:
    """Summed log-probability [prompts, candidates] of each candidate and its token count.

    Prompts with fewer candidates than the most have -inf log-prob and 0 tokens in the unused slots.
    """

    logprob: np.ndarray
    num_tokens: np.ndarray


@dataclass(frozen=True)
class Decoded:
    """Generated tokens [batch, max_new_tokens] (pad_id after the end) and how many each row has.

    A row ends after eos_id or a stop sequence, both kept in the output and counted in `lengths`.
    """

    tokens: np.ndarray
    lengths: np.ndarray


def _batch_multiple() -> int:
    """How many ways the batch dimension is split under the current mesh and rules (1 outside)."""
    if not mesh_is_set():
        return 1
    axes = dict(spmd.get_logical_axis_rules()).get("act_batch")
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    mesh = jax.sharding.get_abstract_mesh()
    return math.prod(mesh.shape[a] for a in axes)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _everywhere(x: jax.Array) -> jax.Array:
    """x replicated on every device of the mesh, so that every process can read all of it.

    Results are a few numbers per row; without this, rows split over the hosts of a multi-process
    mesh could only be read on the host that holds them.
    """
    return jax.lax.with_sharding_constraint(x, PartitionSpec()) if mesh_is_set() else x


@functools.partial(jax.jit, static_argnums=0)
def _score_batch(graphdef, state, tokens, segments, targets, prefix):
    model = nnx.merge(graphdef, state)
    logits = model(tokens, segment_ids=segments, prefix_mask=prefix)[:, :-1]
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logprobs, tokens[:, 1:, None], axis=-1)[..., 0]
    return _everywhere(jnp.sum(jnp.where(targets[:, 1:], picked, 0.0), axis=-1))


def score_continuations(
    model: Decoder,
    prompts: Sequence[Tokens],
    continuations: Sequence[Sequence[Tokens]],
    *,
    batch_size: int = 16,
    length_multiple: int = 64,
    prefix_lm: bool = False,
) -> Scores:
    """log P(continuation | prompt) summed over its tokens, for each prompt's candidates.

    `continuations[i]` are the candidates of `prompts[i]`. Rows (prompt + candidate) are padded to
    a multiple of `length_multiple` and run `batch_size` at a time; with `prefix_lm` the prompt
    attends bidirectionally (for models trained as PrefixLMs).
    """
    if len(prompts) != len(continuations):
        raise UserError(f"{len(prompts)} prompts but candidates for {len(continuations)}")
    rows = []
    for i, (prompt, candidates) in enumerate(zip(prompts, continuations)):
        if not prompt:
            raise UserError(f"prompt {i} is empty: scoring needs at least one token of context")
        for j, candidate in enumerate(candidates):
            if not candidate:
                raise UserError(f"candidate {j} of prompt {i} is empty")
            rows.append((i, j, list(prompt), list(candidate)))
    num_candidates = max((len(c) for c in continuations), default=0)
    logprob = np.full((len(prompts), num_candidates), -np.inf, np.float32)
    num_tokens = np.zeros((len(prompts), num_candidates), np.int32)
    if not rows:
        return Scores(logprob, num_tokens)
    length = _round_up(max(len(p) + len(c) for _, _, p, c in rows), length_multiple)
    if model.config.position == "learned" and length > model.config.max_positions:
        length = max(len(p) + len(c) for _, _, p, c in rows)
        if length > model.config.max_positions:
            raise UserError(f"a prompt + candidate has {length} tokens; the model takes {model.config.max_positions}")
    batch = _round_up(min(batch_size, len(rows)), _batch_multiple())
    graphdef, state = nnx.split(model)
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        tokens = np.zeros((batch, length), np.int32)
        segments = np.zeros((batch, length), np.int32)
        targets = np.zeros((batch, length), bool)
        prefix = np.zeros((batch, length), bool)
        for r, (_, _, prompt, candidate) in enumerate(chunk):
            n, m = len(prompt), len(candidate)
            tokens[r, :n + m] = prompt + candidate
            segments[r, :n + m] = 1
            targets[r, n:n + m] = True
            prefix[r, :n] = prefix_lm
        sums = np.asarray(_score_batch(graphdef, state, tokens, segments, targets, prefix if prefix_lm else None))
        for r, (i, j, _, candidate) in enumerate(chunk):
            logprob[i, j] = sums[r]
            num_tokens[i, j] = len(candidate)
    return Scores(logprob, num_tokens)


def _stop_hit(out: jax.Array, t: jax.Array, stop_sequences: tuple[tuple[int, ...], ...]) -> jax.Array:
    """bool [B]: the tokens generated up to step t end with one of the stop sequences."""
    hit = jnp.zeros(out.shape[0], bool)
    for seq in stop_sequences:
        n = len(seq)
        tail = jax.lax.dynamic_slice_in_dim(out, jnp.maximum(t + 1 - n, 0), n, axis=1)
        hit = hit | ((t + 1 >= n) & jnp.all(tail == jnp.asarray(seq), axis=1))
    return hit


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8))
def _greedy(graphdef, state, prompt, mask, positions, max_new, stop_sequences, eos_id, pad_id):
    model = nnx.merge(graphdef, state)
    batch, prompt_len = prompt.shape
    cache = model.init_cache(batch, prompt_len + max_new)
    logits, cache = model.extend(prompt, cache, positions=positions, token_mask=mask)
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    out = jnp.full((batch, max_new), pad_id, jnp.int32)
    done = jnp.zeros(batch, bool)
    lengths = jnp.zeros(batch, jnp.int32)

    def cond(carry):
        t, *_, done, _ = carry
        return (t < max_new) & ~jnp.all(done)

    def body(carry):
        t, cache, token, position, out, done, lengths = carry
        out = out.at[:, t].set(jnp.where(done, pad_id, token))
        lengths = jnp.where(done, lengths, t + 1)
        hit = _stop_hit(out, t, stop_sequences)
        if eos_id is not None:
            hit = hit | (token == eos_id)
        model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, state))  # fresh Variables at this trace level
        logits, cache = model.extend(token[:, None], cache, positions=position[:, None])
        next_token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        return t + 1, cache, next_token, position + 1, out, done | hit, lengths

    carry = (jnp.int32(0), cache, token, positions[:, -1] + 1, out, done, lengths)
    *_, out, _, lengths = jax.lax.while_loop(cond, body, carry)
    return _everywhere(out), _everywhere(lengths)


def greedy_decode(
    model: Decoder,
    prompt_tokens: Sequence[Tokens] | np.ndarray,
    max_new_tokens: int,
    *,
    stop_sequences: Sequence[Tokens] = (),
    eos_id: int | None = None,
    pad_id: int = 0,
    length_multiple: int = 64,
) -> Decoded:
    """Greedy continuation of each prompt with a KV cache.

    Prompts are left-padded to a multiple of `length_multiple` tokens, so prompts of similar
    lengths share one compiled program.
    """
    if max_new_tokens <= 0:
        raise UserError(f"max_new_tokens must be positive (got {max_new_tokens})")
    prompts = [list(map(int, p)) for p in prompt_tokens]
    if not prompts or any(not p for p in prompts):
        raise UserError("greedy_decode needs at least one prompt, and no empty prompts")
    longest = max(len(p) for p in prompts)
    if model.config.position == "learned" and longest + max_new_tokens > model.config.max_positions:
        raise UserError(f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                        f"{model.config.max_positions} positions")
    batch = _round_up(len(prompts), _batch_multiple())
    width = _round_up(longest, length_multiple)  # padding takes no positions: only cache slots
    tokens = np.full((batch, width), pad_id, np.int32)
    mask = np.zeros((batch, width), bool)
    for r in range(batch):
        prompt = prompts[r % len(prompts)]  # extra rows only fill the mesh
        tokens[r, width - len(prompt):] = prompt
        mask[r, width - len(prompt):] = True
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    stops = tuple(tuple(map(int, s)) for s in stop_sequences if len(s))
    graphdef, state = nnx.split(model)
    out, lengths = _greedy(graphdef, state, tokens, mask, positions, int(max_new_tokens), stops,
                           None if eos_id is None else int(eos_id), int(pad_id))
    return Decoded(np.asarray(out)[:len(prompts)], np.asarray(lengths)[:len(prompts)])
