"""Text in, scores and continuations out: a Decoder and its tokenizer behind the suite's interface.

Prompts and candidates are tokenized by `symtune.data.encoding.encode_prompt`, as the training
pipeline tokenizes inputs and targets: BOS where the model expects it, the space before the answer
in the answer, and EOS after a candidate when the model was trained to end targets with it.
Decoding feeds the prompt without that space, so a continuation's leading space is dropped from
the text it returns. All model calls run inside `context()` (a mesh + logical-rules context), so
a sharded model is evaluated sharded.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator, Protocol, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from symtune.data.encoding import bos_prefix, encode_prompt, split_answer_space
from symtune.data.prompts import Prompt
from symtune.errors import UserError
from symtune.models.decode import greedy_decode, score_continuations
from symtune.models.decoder import Decoder
from symtune.train.mesh import LogicalRules

if TYPE_CHECKING:
    import seqio


@contextlib.contextmanager
def on_mesh(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
    """The mesh and logical-rules context model code runs in."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        yield


class LanguageModel(Protocol):
    """What the suite needs from a model (tests substitute models with known log-probs)."""

    budget: int | None  # what `count` may return for a prompt to fit; None: no limit

    def count(self, prompt: Prompt) -> int:
        """Length of the prompt's inputs plus its longest candidate, in the model's units."""

    def score(self, inputs: Sequence[str], candidates: Sequence[Sequence[str]]) -> np.ndarray:
        """log P(candidate | inputs) [prompts, max candidates]; -inf pads short candidate lists."""

    def generate(self, inputs: Sequence[str], stop_strings: Sequence[str]) -> list[str]:
        """Greedy continuations, ending at the first stop string's tokens or EOS (or the limit)."""


class DecoderModel:
    """LanguageModel over a Decoder and a seqio vocabulary."""

    def __init__(self, model: Decoder, vocabulary: seqio.Vocabulary, context: Callable[[], ContextManager],
                 *, max_length: int, max_decode_tokens: int, batch_size: int, score_eos: bool,
                 prefix_lm: bool = False):
        self.model, self.vocabulary, self.context = model, vocabulary, context
        if model.config.position == "learned":
            max_length = min(max_length, model.config.max_positions)
        if max_decode_tokens >= max_length:
            raise UserError(f"max_decode_tokens={max_decode_tokens} leaves no room for a prompt in "
                            f"max_length={max_length} tokens; raise max_length")
        self.budget = max_length
        self.max_decode_tokens = max_decode_tokens
        self.batch_size = batch_size
        self.score_eos = score_eos
        self.prefix_lm = prefix_lm

    def _encode(self, inputs: str, candidates: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        return encode_prompt(self.vocabulary, inputs, candidates, eos=self.score_eos)

    def count(self, prompt: Prompt) -> int:
        inputs, candidates = self._encode(prompt.inputs, prompt.label_strings)
        return len(inputs) + max(len(c) for c in candidates)

    def score(self, inputs: Sequence[str], candidates: Sequence[Sequence[str]]) -> np.ndarray:
        encoded = [self._encode(text, options) for text, options in zip(inputs, candidates)]
        return self.score_ids([p for p, _ in encoded], [c for _, c in encoded])

    def score_ids(self, prompts: Sequence[Sequence[int]],
                  candidates: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
        """`score` over token ids: log P(candidate | prompt) [prompts, max candidates], -inf pads."""
        with self.context():
            scores = score_continuations(self.model, prompts, candidates, batch_size=self.batch_size,
                                         prefix_lm=self.prefix_lm)
        return scores.logprob

    def _decoding_prompt(self, text: str) -> list[int]:
        """The prompt's ids; of a prompt too long for the budget, BOS and the end (as BIG-bench keeps)."""
        ids, _ = self._encode(text, ())
        bos = bos_prefix(self.vocabulary)
        room = self.budget - self.max_decode_tokens - len(bos)
        body = ids[len(bos):]
        return bos + body[max(0, len(body) - room):]

    def generate(self, inputs: Sequence[str], stop_strings: Sequence[str]) -> list[str]:
        prompts = [self._decoding_prompt(text) for text in inputs]
        stops = [ids for ids in (list(self.vocabulary.encode(s)) for s in stop_strings) if ids]
        texts = []
        for start in range(0, len(prompts), self.batch_size):
            with self.context():
                out = greedy_decode(self.model, prompts[start:start + self.batch_size],
                                    self.max_decode_tokens, stop_sequences=stops,
                                    eos_id=self.vocabulary.eos_id, pad_id=self.vocabulary.pad_id)
            texts += [self.vocabulary.decode(row[:n].tolist()) for row, n in zip(out.tokens, out.lengths)]
        return [text.removeprefix(split_answer_space(prompt)[1]) for text, prompt in zip(texts, inputs)]
