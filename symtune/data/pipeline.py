"""Training batches: PrefixLM features, packing, per-host sharding, resumable deterministic order.

Determinism guarantee: row r of the global batch at step N is a pure function of
(seed, N, r, mixture, vocabulary, seq_len, pack). Prompt i of that row is drawn from a generator
seeded by (seed, N, r, i) and rows are packed on their own, so

- resuming at step N computes batch N directly; nothing is replayed, and `start_step` is the
  whole iterator state a checkpoint needs;
- the global batch does not depend on the number of hosts: host k of K gets rows
  [k * B/K, (k+1) * B/K), so a run may resume on a different host count.

Features follow seqio's PrefixLMFeatureConverter (int32, shape [batch_size // shard_count,
seq_len]): `decoder_target_tokens` is inputs + targets + EOS per segment; `decoder_input_tokens`
the same shifted right with 0 at each segment start; `decoder_loss_weights` is 1 on target tokens
(and EOS) only; `decoder_causal_attention` is 1 on each segment's inputs plus one position;
`decoder_segment_ids` number segments from 1 (0 = padding); `decoder_positions` restart at 0 per
segment. Padding is marked by segment id 0, never inferred from token values.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import gin
import numpy as np
import seqio

from symtune.data.encoding import encode_prompt
from symtune.data.prompts import (TUNING_SETTING, TUNING_SHOTS, Prompt, TuningMixture, fit_to_budget,
                                  prompt_rng)
from symtune.data.sources import DataConfig
from symtune.data.tasks import TUNING_MIXTURE, load_tuning_mixture
from symtune.data.vocab import get_vocabulary
from symtune.errors import UserError

FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions", "decoder_causal_attention")
MIN_FREE_TOKENS = 32  # a packed row stops taking prompts when fewer positions are left
MAX_IMPOSSIBLE = 1000  # consecutive prompts that cannot fit an empty row before giving up


@dataclass
class PackStats:
    """Running counts over the batches an iterator produced."""

    prompts: int = 0
    impossible: int = 0  # prompts that did not fit even alone in a row; skipped
    target_tokens: int = 0
    tokens: int = 0


class RowBuilder:
    """Fills one sequence with tokenized prompts (see the module docstring for the layout)."""

    def __init__(self, mixture: TuningMixture, vocabulary: seqio.Vocabulary, seq_len: int,
                 pack: bool, stats: PackStats):
        self.mixture, self.vocabulary = mixture, vocabulary
        self.seq_len, self.pack, self.stats = seq_len, pack, stats

    def encode(self, prompt: Prompt) -> tuple[list[int], list[int]]:
        """(inputs, targets + EOS) token ids, as evaluation scores and decodes them (`encode_prompt`)."""
        inputs, (targets,) = encode_prompt(self.vocabulary, prompt.inputs, [prompt.targets])
        return inputs, targets

    def count(self, prompt: Prompt) -> int:
        inputs, targets = self.encode(prompt)
        return len(inputs) + len(targets)

    def segments(self, seed: int, step: int, row: int) -> list[tuple[list[int], list[int]]]:
        """The (inputs, targets) token lists that fill row `row` of step `step`."""
        segments, free, impossible = [], self.seq_len, 0
        for i in itertools.count():
            prompt = self.mixture.prompt(prompt_rng(seed, step, row, i))
            inputs, targets = self.encode(prompt)
            if len(inputs) + len(targets) > free:
                # Alone in a row a prompt may shrink to one exemplar per class; filling the end
                # of a packed row it keeps the paper's minimum of two.
                floor = TUNING_SHOTS[0] if segments else 1
                prompt = fit_to_budget(prompt, free, self.count, min_per_class=floor)
                if prompt is None:
                    if segments:
                        break
                    self.stats.impossible += 1
                    impossible += 1
                    if impossible >= MAX_IMPOSSIBLE:
                        raise UserError(f"seq_len={self.seq_len} is too short for any prompt "
                                        "(query plus one exemplar per class); raise seq_len")
                    continue
                inputs, targets = self.encode(prompt)
            segments.append((inputs, targets))
            free -= len(inputs) + len(targets)
            if not self.pack or free < MIN_FREE_TOKENS:
                break
        return segments

    def features(self, seed: int, step: int, row: int) -> dict[str, np.ndarray]:
        out = {name: np.zeros(self.seq_len, np.int32) for name in FEATURES}
        start = 0
        for number, (inputs, targets) in enumerate(self.segments(seed, step, row), start=1):
            tokens = inputs + targets
            end = start + len(tokens)
            out["decoder_target_tokens"][start:end] = tokens
            out["decoder_input_tokens"][start + 1:end] = tokens[:-1]
            out["decoder_loss_weights"][start + len(inputs):end] = 1
            out["decoder_causal_attention"][start:start + len(inputs) + 1] = 1
            out["decoder_segment_ids"][start:end] = number
            out["decoder_positions"][start:end] = np.arange(len(tokens))
            self.stats.prompts += 1
            self.stats.target_tokens += len(targets)
            self.stats.tokens += len(tokens)
            start = end
        return out


class TrainBatches:
    """Iterator over per-host batches from `start_step` on; `step` is the next batch's step."""

    def __init__(self, builder: RowBuilder, seed: int, rows: Sequence[int], start_step: int,
                 missing: list[str]):
        self.builder, self.seed, self.rows, self.step = builder, seed, rows, start_step
        self.missing = missing  # datasets left out of the mixture because no source has them

    @property
    def stats(self) -> PackStats:
        return self.builder.stats

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The batch of any step, without moving the iterator."""
        rows = [self.builder.features(self.seed, step, r) for r in self.rows]
        return {name: np.stack([row[name] for row in rows]) for name in FEATURES}

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch(self.step)
        self.step += 1
        return batch


def host_rows(batch_size: int, shard_index: int | None, shard_count: int | None) -> range:
    """The global-batch rows this host builds."""
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if batch_size % shard_count:
        raise UserError(f"batch_size={batch_size} is not divisible by the {shard_count} hosts; "
                        "use a multiple")
    if not 0 <= shard_index < shard_count:
        raise UserError(f"shard_index={shard_index} is outside 0..{shard_count - 1}")
    per_host = batch_size // shard_count
    return range(shard_index * per_host, (shard_index + 1) * per_host)


def check_batch_shape(batch_size: int, seq_len: int, start_step: int = 0) -> None:
    """A UserError unless batch_size >= 1, seq_len >= 8 and start_step >= 0."""
    if seq_len < 8 or batch_size < 1 or start_step < 0:
        raise UserError(f"need seq_len >= 8, batch_size >= 1, start_step >= 0 "
                        f"(got {seq_len}, {batch_size}, {start_step})")


@gin.configurable
def train_batches(mixture_or_task: str = TUNING_MIXTURE,
                  vocabulary: str | seqio.Vocabulary = "default", *, batch_size: int,
                  seq_len: int, seed: int = 0, start_step: int = 0, shard_index: int | None = None,
                  shard_count: int | None = None, pack: bool = True,
                  config: DataConfig | None = None, skip_missing: bool = False,
                  setting: str = TUNING_SETTING, rows: Sequence[int] | None = None) -> TrainBatches:
    """Per-host batches of symbol-tuning prompts as PrefixLM features (numpy int32).

    `batch_size` is global. `rows` are the global rows this host builds (a trainer passes the
    ones its devices hold, symtune.train.mesh.process_batch_rows); without them each host gets
    [batch_size // shard_count, seq_len] arrays, shard_index/shard_count defaulting to
    jax.process_index()/process_count(). Row r of step N depends on (seed, N, r) only. `vocabulary` is a
    seqio vocabulary or `default`, `byte`, `spm:PATH`, `hf:PATH`. With `skip_missing`, tuning
    datasets no source holds are left out (listed in `.missing`) instead of failing. `setting`
    renders the prompts: `symbols` (symbol tuning) or a baseline such as `instructions_natural`.
    """
    check_batch_shape(batch_size, seq_len, start_step)
    if rows is None:
        rows = host_rows(batch_size, shard_index, shard_count)
    elif not rows or not all(0 <= r < batch_size for r in rows):
        raise UserError(f"rows must be a non-empty selection of 0..{batch_size - 1}, got {list(rows)[:8]}")
    mixture, missing = load_tuning_mixture(mixture_or_task, config, skip_missing, setting)
    builder = RowBuilder(mixture, get_vocabulary(vocabulary), seq_len, pack, PackStats())
    return TrainBatches(builder, seed, rows, start_step, missing)


@gin.configurable
@dataclass(frozen=True)
class TrainData:
    """The training-data settings a run binds with gin; `batches(start_step)` starts iterating."""

    mixture_or_task: str = TUNING_MIXTURE
    vocabulary: str = "default"
    batch_size: int = 32
    seq_len: int = 2048
    seed: int = 0
    pack: bool = True
    skip_missing: bool = False
    setting: str = TUNING_SETTING  # `instructions_natural` etc. for non-symbol baselines
    config: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self):
        check_batch_shape(self.batch_size, self.seq_len)

    def batches(self, start_step: int = 0, shard_index: int | None = None,
                shard_count: int | None = None, rows: Sequence[int] | None = None) -> TrainBatches:
        return train_batches(self.mixture_or_task, self.vocabulary, batch_size=self.batch_size,
                             seq_len=self.seq_len, seed=self.seed, start_step=start_step,
                             shard_index=shard_index, shard_count=shard_count, pack=self.pack,
                             config=self.config, skip_missing=self.skip_missing, setting=self.setting,
                             rows=rows)
