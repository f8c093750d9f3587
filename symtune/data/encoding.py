"""A prompt and its answer as token ids: the one tokenization training, scoring and decoding share.

Prompts end where the answer starts ("... ->", "Output:"); the space written between them belongs
to the answer, so " 53347" is one word to a BPE tokenizer (GPT-2, Pythia, Llama-3, Qwen2) as in
the exemplars, where every label follows its space. Training (`RowBuilder.encode`) learns answers
that way, rank classification scores candidates that way, and greedy decoding feeds the prompt
without the space and expects the answer to begin with it. SentencePiece and byte vocabularies
give the same tokens either way. BOS starts the prompt where the model expects one (`hf:`
tokenizers that add it: Llama-2, Llama-3); EOS ends each answer when asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import seqio


def split_answer_space(inputs: str) -> tuple[str, str]:
    """`inputs` without the spaces that end it, and those spaces (which begin the answer)."""
    prompt = inputs.rstrip(" ")
    return prompt, inputs[len(prompt):]


def bos_prefix(vocabulary: seqio.Vocabulary) -> list[int]:
    """[BOS] when the vocabulary's model starts every sequence with it, else []."""
    # Only `hf:` vocabularies say so; the shipped SentencePiece and byte vocabularies have no BOS.
    if getattr(vocabulary, "add_bos", False):
        return [vocabulary.bos_id]
    return []


def encode_prompt(vocabulary: seqio.Vocabulary, inputs: str, answers: Sequence[str] = (), *,
                  eos: bool = True) -> tuple[list[int], list[list[int]]]:
    """The prompt's token ids and each answer's, as the model is trained on and scored with them.

    The prompt gets BOS where the model expects one and loses its trailing spaces, which start
    every answer; answers end with EOS when `eos` (and the vocabulary has one). Decoding passes
    no answers and strips the moved space from what the model generates.
    """
    prompt, space = split_answer_space(inputs)
    end = [vocabulary.eos_id] if eos and vocabulary.eos_id is not None else []
    return (bos_prefix(vocabulary) + list(vocabulary.encode(prompt)),
            [list(vocabulary.encode(space + answer)) + end for answer in answers])
