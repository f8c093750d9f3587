"""BOS, EOS and pad of a Hugging Face tokenizer, read from the files a model directory ships.

Token names come from special_tokens_map.json, else tokenizer_config.json (the order
`transformers` applies them in); a token neither names takes its id from generation_config.json
(GPT-2 names its EOS only there). Whether BOS starts every sequence is tokenizer_config.json's
`add_bos_token` (Llama-2), else whatever tokenizer.json's post-processor puts before a text
(Llama-3's template adds <|begin_of_text|>; GPT-2, Pythia and Qwen2 add nothing). `SpecialTokens`
(gin) overrides any of these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gin

from symtune.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"
_PROBE = "a"  # any text the tokenizer encodes to at least one token


@gin.configurable
@dataclass(frozen=True)
class SpecialTokens:
    """Special tokens of an `hf:` vocabulary set by hand; None: as the tokenizer's files say."""

    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    add_bos: bool | None = None  # start every sequence with BOS


@dataclass(frozen=True)
class SpecialTokenIds:
    """The resolved ids; `add_bos` implies `bos_id` is set."""

    bos_id: int | None
    eos_id: int
    pad_id: int
    add_bos: bool


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    return value if isinstance(value, dict) else {}


def _content(value: Any) -> str | None:
    """A token as the config files write it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _first_id(value: Any) -> int | None:
    """generation_config.json's id, or the first of its list (Llama-3-Instruct lists two EOS ids)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _template_prefix(tokenizer: Tokenizer) -> list[int]:
    """The ids tokenizer.json's post-processor puts before a text's own tokens."""
    plain = tokenizer.encode(_PROBE, add_special_tokens=False).ids
    full = tokenizer.encode(_PROBE, add_special_tokens=True).ids
    for at in range(len(full) - len(plain) + 1):
        if full[at:at + len(plain)] == plain:
            return full[:at]
    return []


def read_special_tokens(tokenizer: Tokenizer, directory: Path,
                        overrides: SpecialTokens | None = None) -> SpecialTokenIds:
    """BOS, EOS and pad ids of the tokenizer whose files are in `directory`, and whether it adds BOS.

    Pad falls back to generation_config.json's pad_token_id, then to EOS (as `transformers`
    generation pads); padding is masked by segment ids, never by value, so any id serves.
    A tokenizer with no EOS at all is a UserError naming the override to set. `overrides`
    defaults to gin's `SpecialTokens()`.
    """
    overrides = overrides or SpecialTokens()
    config = _read_json(directory / TOKENIZER_CONFIG)
    token_map = _read_json(directory / SPECIAL_TOKENS_MAP)
    generation = _read_json(directory / GENERATION_CONFIG)

    def lookup(token: str, where: str) -> int:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise UserError(f"{where} names {token!r}, which is not in {directory / TOKENIZER_FILE}")
        return token_id

    def token_id(kind: str) -> int | None:
        key = f"{kind}_token"
        given = getattr(overrides, key)
        if given is not None:
            return lookup(given, f"SpecialTokens.{key}")
        for name, source in ((SPECIAL_TOKENS_MAP, token_map), (TOKENIZER_CONFIG, config)):
            token = _content(source.get(key))
            if token is not None:
                return lookup(token, f"{key} of {directory / name}")
        found = _first_id(generation.get(f"{key}_id"))
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        # Some configs write -1 for "none"; an id outside the vocabulary is no token at all.
        return found if found is not None and 0 <= found < size else None

    eos = token_id("eos")
    if eos is None:
        raise UserError(f"the tokenizer in {directory} names no EOS token (no eos_token in "
                        f"{TOKENIZER_CONFIG} or {SPECIAL_TOKENS_MAP}, no eos_token_id in "
                        f"{GENERATION_CONFIG}); set --gin.SpecialTokens.eos_token=\"'TOKEN'\"")
    pad = token_id("pad")
    leading = _template_prefix(tokenizer)
    bos = token_id("bos")
    if bos is None and leading:
        bos = leading[0]
    add_bos = overrides.add_bos
    if add_bos is None:
        listed = config.get("add_bos_token")
        add_bos = listed if isinstance(listed, bool) else bool(leading)
    if add_bos and bos is None:
        raise UserError(f"the tokenizer in {directory} adds a BOS token but names none; set "
                        "--gin.SpecialTokens.bos_token=\"'TOKEN'\" (or SpecialTokens.add_bos=False)")
    return SpecialTokenIds(bos_id=bos, eos_id=eos, pad_id=eos if pad is None else pad, add_bos=add_bos)
