"""Tiny Hugging Face tokenizer directories shaped like the ones real models ship, built offline.

Each is a `tokenizers` BPE trained in a fraction of a second on a few lines, saved with the
special tokens, pre-/post-processors and config files (tokenizer_config.json,
special_tokens_map.json, generation_config.json) of its model family as the Hub ships them.
`EXPECTED` says what each must resolve to.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "Input: the movie was great, I loved it\nOutput: 53347",
    "Question: is the cat on the mat?\nAnswer: yes [1, 2, 3] -> 4 5 6 7 8 9 0",
    "X = a plot about friends and family\nY = subjective; objective. Label: positive negative",
    "Student: This film is what it is!\nTeacher: foo bar \"quoted\" (x) {y} 'z' $ % & *",
] * 20
# GPT-4-style split used by Llama-3 (Qwen2's differs only in taking single digits).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def _byte_level_bpe(split: str | None, vocab_size: int = 420) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None))
    if split is None:  # GPT-2 / Pythia: ByteLevel's own regex
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _write(path: Path, tok: Tokenizer, **configs: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    for name, config in configs.items():
        (path / f"{name}.json").write_text(json.dumps(config, indent=2))
    return path


def _added(content: str, typed: bool = False) -> dict:
    """A special token as the config files write an AddedToken (older tokenizer_config.json files
    mark it with "__type")."""
    token = {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **token, "special": True} if typed else token


def llama2(path: Path) -> Path:
    """SentencePiece-style BPE with byte fallback: <unk> 0, <s> 1, </s> 2, <0x00>..<0xFF> 3..258."""
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=list(string.printable.strip() + "▁"), show_progress=False))
    model = json.loads(trained.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in sorted(model["vocab"], key=model["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    # The legacy normalizer Llama-2's tokenizer.json ships with, and its BOS template.
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return _write(path, tok,
                  tokenizer_config={"add_bos_token": True, "add_eos_token": False, "legacy": False,
                                    "pad_token": None, "tokenizer_class": "LlamaTokenizer",
                                    **{k: _added(v, typed=True) for k, v in names.items()}},
                  special_tokens_map={k: _added(v) for k, v in names.items()},
                  generation_config={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})


def llama3(path: Path) -> Path:
    """Byte-level BPE; <|begin_of_text|>, <|end_of_text|>, <|eot_id|> after the learned tokens, as
    Llama-3-Instruct ships them (EOS <|eot_id|>; BOS added by the post-processor's template)."""
    tok = _byte_level_bpe(LLAMA3_SPLIT)
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    bos, end, eot = (tok.token_to_id(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return _write(path, tok,
                  tokenizer_config={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                    "clean_up_tokenization_spaces": True, "model_max_length": 8192,
                                    "model_input_names": ["input_ids", "attention_mask"],
                                    "tokenizer_class": "PreTrainedTokenizerFast"},
                  special_tokens_map={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
                  generation_config={"bos_token_id": bos, "eos_token_id": [end, eot]})


def gpt2(path: Path) -> Path:
    """Byte-level BPE with <|endoftext|> last; only generation_config.json names it (as GPT-2's)."""
    tok = _byte_level_bpe(None)
    tok.add_special_tokens(["<|endoftext|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    end = tok.token_to_id("<|endoftext|>")
    return _write(path, tok, tokenizer_config={"model_max_length": 1024},
                  generation_config={"bos_token_id": end, "eos_token_id": end})


def pythia(path: Path) -> Path:
    """GPT-NeoX byte-level BPE: <|endoftext|> 0 (BOS, EOS, unk), <|padding|> 1 (named pad by no file)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    specials = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    return _write(path, tok, special_tokens_map=specials,
                  tokenizer_config={"add_prefix_space": False, "tokenizer_class": "GPTNeoXTokenizer", **specials})


def qwen2(path: Path) -> Path:
    """Byte-level BPE with <|endoftext|>, <|im_start|>, <|im_end|> last, as Qwen2-Instruct ships them:
    EOS <|im_end|>, pad <|endoftext|>, no BOS."""
    tok = _byte_level_bpe(QWEN2_SPLIT)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    end, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    return _write(path, tok,
                  tokenizer_config={"add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
                                    "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace",
                                    "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer"},
                  special_tokens_map={"additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
                                      "eos_token": _added("<|im_end|>"),
                                      "pad_token": _added("<|endoftext|>")},
                  generation_config={"bos_token_id": end, "pad_token_id": end, "eos_token_id": [im_end, end]})


BUILDERS = {"llama2": llama2, "llama3": llama3, "gpt2": gpt2, "pythia": pythia, "qwen2": qwen2}
# (bos, eos, pad) as token strings (None: no BOS), and whether every sequence starts with BOS.
EXPECTED = {
    "llama2": ("<s>", "</s>", "<unk>", True),  # pad: generation_config.json's pad_token_id 0
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", True),
    "gpt2": ("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", False),
    "pythia": ("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", False),
    "qwen2": ("<|endoftext|>", "<|im_end|>", "<|endoftext|>", False),
}
