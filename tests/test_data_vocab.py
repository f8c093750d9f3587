"""Vocabularies: the shipped SentencePiece model, bytes, and local Hugging Face tokenizers with the
special tokens their model directories name; how a prompt and its answer become token ids."""

import json
import shutil

import gin
import numpy as np
import pytest

import tiny_tokenizers
from symtune.config import parse_gin
from symtune.data.encoding import encode_prompt
from symtune.data.pipeline import train_batches
from symtune.data.sources import DataConfig
from symtune.data.special_tokens import SpecialTokens
from symtune.data.vocab import (DEFAULT_MODEL, DEFAULT_VOCAB_SIZE, HFTokenizerVocabulary,
                                default_vocabulary, get_vocabulary)
from symtune.errors import UserError


def test_default_vocabulary_is_small_shipped_and_t5_numbered():
    vocab = default_vocabulary()
    assert DEFAULT_MODEL.stat().st_size < 1_000_000
    assert vocab.vocab_size == DEFAULT_VOCAB_SIZE == 4096
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    text = "Input: the movie was great\nOutput: 4821"
    assert vocab.decode(vocab.encode(text)) == text.replace("\n", " ")  # SentencePiece folds \n
    assert vocab.decode(vocab.encode("NTP élan ☃")) == "NTP élan ☃"  # byte fallback, no unk


def test_byte_vocabulary_and_bad_spec():
    assert get_vocabulary("byte").vocab_size == 259
    with pytest.raises(UserError, match="unknown vocabulary 'gpt9'; use default, byte"):
        get_vocabulary("gpt9")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A tiny BPE tokenizer trained offline, shaped like a GPT-NeoX/Pythia one (configs included)."""
    return tiny_tokenizers.pythia(tmp_path_factory.mktemp("tok"))


def test_hf_tokenizer_vocabulary_round_trips_and_finds_special_tokens(tokenizer_dir):
    vocab = get_vocabulary(f"hf:{tokenizer_dir}")
    assert isinstance(vocab, HFTokenizerVocabulary)
    # Pythia names <|endoftext|> (0) as BOS/EOS and no pad: padding takes EOS, as HF generation does.
    assert vocab.eos_id == 0 and vocab.pad_id == 0 and not vocab.add_bos
    text = "Input: the dog sat\nOutput: 17"
    assert vocab.decode(vocab.encode(text)) == text
    import tensorflow as tf

    np.testing.assert_array_equal(vocab.encode_tf(tf.constant(text)).numpy(), vocab.encode(text))
    with pytest.raises(UserError, match="no tokenizer.json at"):
        HFTokenizerVocabulary(tokenizer_dir / "missing")


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {name: build(root / name) for name, build in tiny_tokenizers.BUILDERS.items()}


@pytest.mark.parametrize("family", sorted(tiny_tokenizers.BUILDERS))
def test_special_tokens_come_from_the_model_directory_files(family, tokenizer_dirs):
    vocab = get_vocabulary(f"hf:{tokenizer_dirs[family]}")
    bos, eos, pad, add_bos = tiny_tokenizers.EXPECTED[family]
    ids = vocab._tokenizer.token_to_id
    assert (vocab.bos_id, vocab.eos_id, vocab.pad_id, vocab.add_bos) == (ids(bos), ids(eos), ids(pad), add_bos)


@pytest.mark.parametrize("family", sorted(tiny_tokenizers.BUILDERS))
def test_bos_and_eos_agree_with_transformers(family, tokenizer_dirs):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(tokenizer_dirs[family])
    ours = get_vocabulary(f"hf:{tokenizer_dirs[family]}")
    assert (theirs("x").input_ids[0] == ours.bos_id) == ours.add_bos
    if theirs.eos_token_id is not None:  # GPT-2 names its EOS only in generation_config.json
        assert theirs.eos_token_id == ours.eos_id


@pytest.mark.parametrize("family", sorted(tiny_tokenizers.BUILDERS))
def test_encode_prompt_starts_with_bos_and_moves_the_space_into_the_answer(family, tokenizer_dirs):
    vocab = get_vocabulary(f"hf:{tokenizer_dirs[family]}")
    inputs, (target, other) = encode_prompt(vocab, "Input: the cat\nOutput: ", ["53347", "yes"])
    assert (inputs[0] == vocab.bos_id) == vocab.add_bos
    assert inputs[vocab.add_bos:] == vocab.encode("Input: the cat\nOutput:")
    assert target == vocab.encode(" 53347") + [vocab.eos_id] and other[-1] == vocab.eos_id
    assert encode_prompt(vocab, "Output: ", ["1"], eos=False)[1] == [vocab.encode(" 1")]


def test_shipped_vocabularies_add_no_bos_and_give_the_same_tokens_with_the_space_moved():
    for vocab in (default_vocabulary(), get_vocabulary("byte")):
        inputs, (target,) = encode_prompt(vocab, "Input: the cat\nOutput: ", ["53347"])
        assert inputs + target == list(vocab.encode("Input: the cat\nOutput: 53347")) + [vocab.eos_id]


def test_explicit_special_tokens_win_over_the_files(tokenizer_dirs):
    path = tokenizer_dirs["llama3"]
    overrides = SpecialTokens(eos_token="<|end_of_text|>", pad_token="<|begin_of_text|>", add_bos=False)
    vocab = HFTokenizerVocabulary(path, overrides)
    ids = vocab._tokenizer.token_to_id
    assert (vocab.eos_id, vocab.pad_id) == (ids("<|end_of_text|>"), ids("<|begin_of_text|>")) and not vocab.add_bos
    assert encode_prompt(vocab, "Output: ")[0] == vocab.encode("Output:")
    with pytest.raises(UserError, match="SpecialTokens.eos_token names '<nope>', which is not in"):
        HFTokenizerVocabulary(path, SpecialTokens(eos_token="<nope>"))


def test_special_tokens_are_bound_with_gin(tokenizer_dirs):
    parse_gin([], ["SpecialTokens.eos_token='<|end_of_text|>'"])
    try:
        vocab = get_vocabulary(f"hf:{tokenizer_dirs['llama3']}")
    finally:
        gin.clear_config()
    assert vocab.eos_id == vocab._tokenizer.token_to_id("<|end_of_text|>")


def test_a_tokenizer_without_eos_is_a_one_line_error_naming_the_override(tokenizer_dirs, tmp_path):
    path = tmp_path / "no_eos"
    shutil.copytree(tokenizer_dirs["gpt2"], path)
    (path / "generation_config.json").unlink()
    with pytest.raises(UserError, match=r"names no EOS token .*--gin.SpecialTokens.eos_token=") as error:
        get_vocabulary(f"hf:{path}")
    assert "\n" not in str(error.value)


def test_a_bos_the_tokenizer_adds_but_cannot_name_is_an_error(tokenizer_dirs, tmp_path):
    path = tmp_path / "nameless_bos"
    shutil.copytree(tokenizer_dirs["gpt2"], path)
    (path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 0}))
    with pytest.raises(UserError, match="adds a BOS token but names none; set --gin.SpecialTokens.bos_token"):
        get_vocabulary(f"hf:{path}")


def test_train_batches_with_a_hf_tokenizer(tokenizer_dir, data_dir):
    vocab = get_vocabulary(f"hf:{tokenizer_dir}")
    batch = next(train_batches("symbol_tuning_cb", vocab, batch_size=2, seq_len=1024,
                               config=DataConfig(data_dir=str(data_dir)), shard_index=0,
                               shard_count=1))
    seg, tokens = batch["decoder_segment_ids"][0], batch["decoder_target_tokens"][0]
    weights = batch["decoder_loss_weights"][0]
    first = (seg == 1) & (weights == 1)
    assert tokens[first][-1] == vocab.eos_id  # EOS 0 is a real token: weighted, not padding
    target = vocab.decode(tokens[first][:-1].tolist())
    assert target.startswith(" ") and f"{target}\n" in vocab.decode(tokens[seg == 1].tolist())
    text = vocab.decode(tokens[seg == 1].tolist())
    assert "Premise: " in text
