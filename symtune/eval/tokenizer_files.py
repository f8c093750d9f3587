"""Tokenizer files of a Hugging Face model directory, to and from our vocabulary specs.

`hf:PATH` copies tokenizer.json and the config files that name its special tokens; SentencePiece
models (`default`, `spm:PATH`) are written as spiece.model with a T5Tokenizer config, the byte
vocabulary as a ByT5Tokenizer config without extra ids: each loads in `transformers.AutoTokenizer`
with our token ids, and `vocabulary_of` reads the spec back for `symtune eval --hf_model`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from symtune.data.special_tokens import (GENERATION_CONFIG, SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG,
                                         TOKENIZER_FILE)
from symtune.data.vocab import DEFAULT_MODEL

SPM_FILE = "spiece.model"
# generation_config.json too: some tokenizers (GPT-2) name their EOS only there.
HF_TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, GENERATION_CONFIG)


def write_tokenizer_files(vocabulary: str, out_dir: str | Path) -> list[str]:
    """Writes the files that make `vocabulary` an HF tokenizer in `out_dir`; their names."""
    out = Path(out_dir)
    kind, _, path = vocabulary.partition(":")
    if kind == "hf":
        source = Path(path) if Path(path).is_dir() else Path(path).parent
        names = [n for n in HF_TOKENIZER_FILES if (source / n).is_file()]
        for name in names:
            shutil.copy(source / name, out / name)
        return names
    if kind in ("default", "spm"):
        shutil.copy(DEFAULT_MODEL if kind == "default" else path, out / SPM_FILE)
        config: dict[str, Any] = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "eos_token": "</s>",
                                  "unk_token": "<unk>", "pad_token": "<pad>"}
        names = [SPM_FILE, TOKENIZER_CONFIG]
    else:
        config = {"tokenizer_class": "ByT5Tokenizer", "extra_ids": 0}
        names = [TOKENIZER_CONFIG]
    (out / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return names


def vocabulary_of(model_dir: str | Path) -> str | None:
    """The vocabulary spec of an HF model directory's tokenizer files, or None if it has none."""
    model_dir = Path(model_dir).resolve()
    if (model_dir / TOKENIZER_FILE).is_file():
        return f"hf:{model_dir}"
    if (model_dir / SPM_FILE).is_file():
        return f"spm:{model_dir / SPM_FILE}"
    config_file = model_dir / TOKENIZER_CONFIG
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return "byte" if config.get("tokenizer_class") == "ByT5Tokenizer" else None
