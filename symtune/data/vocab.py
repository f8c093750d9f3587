"""seqio vocabularies: SentencePiece, bytes, and Hugging Face tokenizers loaded from local files
(their special tokens read from the model directory's config files: `symtune.data.special_tokens`).

`default_vocabulary()` is a small SentencePiece model (4,096 pieces, byte fallback, T5 ids:
pad 0, eos 1, unk 2) shipped in `assets/`, trained once by `build_default_model` on the training
text of the tuning datasets in a local export plus the tuning symbol pool; it keeps CPU runs of
tiny models cheap. Rebuild it with
`python -m symtune.data.vocab --data_dir ../shared/data`.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

import seqio
import tensorflow as tf

from symtune.data.special_tokens import TOKENIZER_FILE, SpecialTokens, read_special_tokens
from symtune.errors import UserError

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "symtune_sp4096.model"
DEFAULT_VOCAB_SIZE = 4096


class HFTokenizerVocabulary(seqio.Vocabulary):
    """A seqio vocabulary over a local Hugging Face tokenizer: tokenizer.json and, beside it, the
    config files that name its special tokens (see `symtune.data.special_tokens`).

    `encode` adds no special tokens; `symtune.data.encoding.encode_prompt` adds BOS (where
    `add_bos`) and EOS. Without a pad token padding uses generation_config.json's pad id, else
    EOS. `special` defaults to gin's `SpecialTokens()`.
    """

    def __init__(self, path: str | Path, special: SpecialTokens | None = None):
        from tokenizers import Tokenizer

        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise UserError(f"no {TOKENIZER_FILE} at {path}; pass a directory or file saved by "
                            "`tokenizers`/`transformers` (save_pretrained)")
        self._path = file
        self._tokenizer = Tokenizer.from_file(str(file))
        self._special = read_special_tokens(self._tokenizer, file.parent, special)
        super().__init__(extra_ids=0)

    @property
    def bos_id(self) -> int | None:
        return self._special.bos_id

    @property
    def add_bos(self) -> bool:
        """Whether the model expects BOS at the start of every sequence."""
        return self._special.add_bos

    @property
    def eos_id(self) -> int:
        return self._special.eos_id

    @property
    def pad_id(self) -> int:
        return self._special.pad_id

    @property
    def unk_id(self) -> int | None:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> list[int]:
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        def encode(x):
            return tf.constant(self._encode(x.numpy().decode("utf-8")), dtype=tf.int32)

        ids = tf.py_function(encode, [s], tf.int32)
        ids.set_shape([None])
        return ids

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        text = tf.py_function(lambda x: self._decode(x.numpy().tolist()), [ids], tf.string)
        text.set_shape([])
        return text

    def __eq__(self, other) -> bool:
        return (isinstance(other, HFTokenizerVocabulary) and other._path == self._path
                and other._special == self._special)


@functools.cache
def default_vocabulary() -> seqio.SentencePieceVocabulary:
    """The shipped 4,096-piece SentencePiece vocabulary."""
    if not DEFAULT_MODEL.is_file():
        raise UserError(f"{DEFAULT_MODEL} is missing; rebuild it with "
                        "`python -m symtune.data.vocab --data_dir DIR`")
    return seqio.SentencePieceVocabulary(str(DEFAULT_MODEL))


def get_vocabulary(spec: str | seqio.Vocabulary) -> seqio.Vocabulary:
    """A vocabulary from `default`, `byte`, `spm:PATH` or `hf:PATH` (or a vocabulary as is)."""
    if isinstance(spec, seqio.Vocabulary):
        return spec
    kind, _, path = spec.partition(":")
    if kind == "default" and not path:
        return default_vocabulary()
    if kind == "byte" and not path:
        return seqio.ByteVocabulary()
    if kind == "spm" and path:
        if not Path(path).is_file():
            raise UserError(f"SentencePiece model {path} not found")
        return seqio.SentencePieceVocabulary(path)
    if kind == "hf" and path:
        return HFTokenizerVocabulary(path)
    raise UserError(f"unknown vocabulary {spec!r}; use default, byte, spm:PATH or hf:PATH")


def training_text(config) -> list[str]:
    """Lines to train the default vocabulary on: tuning inputs, label names, tuning symbols."""
    from symtune.data.catalog import TUNING
    from symtune.data.prompts import TEMPLATES
    from symtune.data.sources import DatasetNotFound, load_examples
    from symtune.data.symbols import tuning_pool

    lines = [t.pair("x", "y") for t in TEMPLATES]
    for spec in TUNING:
        try:
            lines += load_examples(spec, config=config).texts
        except DatasetNotFound:
            continue
        lines += spec.labels
    pool = tuning_pool()
    lines += [" ".join(category[i:i + 100]) for category in pool.categories
              for i in range(0, len(category), 100)]
    return lines


def build_default_model(data_dir: str, out: Path = DEFAULT_MODEL,
                        vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Trains the default SentencePiece model on a local export directory's tuning data."""
    import sentencepiece as spm

    from symtune.data.sources import DataConfig

    lines = training_text(DataConfig(data_dir=data_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.write("\n".join(line.replace("\n", " ") for line in lines))
        f.flush()
        spm.SentencePieceTrainer.train(
            input=f.name, model_prefix=str(out.with_suffix("")), vocab_size=vocab_size,
            model_type="unigram", byte_fallback=True, character_coverage=0.9995,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, input_sentence_size=2_000_000,
            shuffle_input_sentence=True, split_digits=True, max_sentence_length=16384,
            minloglevel=2)
    out.with_suffix(".vocab").unlink(missing_ok=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="rebuild the default SentencePiece vocabulary")
    parser.add_argument("--data_dir", required=True, help="a local export directory")
    print(build_default_model(parser.parse_args().data_dir))
