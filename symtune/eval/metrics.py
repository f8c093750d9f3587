"""Scoring one unit: rank classification over the prompt's label set, BIG-bench exact match.

Rank classification takes the path of the seqio `symbol_eval_*` tasks (`symtune.data.ranking`):
t5's rank_classification preprocessor expands each example into one row per candidate, the
model scores every row (the candidate's summed log-probability; a unit's rows in one `score`
call), and t5's rank_classification postprocessor and metric decide each example: the candidate
with the highest score wins, ties go to the first. `seqio_score_fn` puts a symtune Decoder behind
`seqio.Evaluator` for those tasks.

BIG-bench answers are post-processed as BIG-bench does (`postprocess_output` in its
API): cut after the task's `stop_string` when it occurs past the start, then keep the first
match of the task's `output_regex` ("" when nothing matches); a response is correct when it
equals the target. Generation also stops at the exemplar separator, and what follows it (the
model's next made-up exemplar) is dropped before post-processing.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from symtune.data.bigbench import read_task
from symtune.data.evalsets import EvalExample
from symtune.data.prompts import EXEMPLAR_SEPARATOR
from symtune.data.sources import DataConfig
from symtune.eval.runner import LanguageModel

if TYPE_CHECKING:
    import tensorflow as tf

    from symtune.eval.runner import DecoderModel

ScoreFn = Callable[..., list[tuple[int, float]]]  # seqio.Evaluator's score_fn(dataset, model_feature_shapes)


@dataclass(frozen=True)
class OutputRule:
    """How a BIG-bench task reads an answer out of generated text."""

    stop_string: str | None = None
    output_regex: str | None = None


@functools.cache
def output_rule(dataset: str, config: DataConfig) -> OutputRule:
    """The rule in a BIG-bench (sub)task's task.json, e.g. dataset `list_functions/c001`."""
    task = read_task(f"bigbench/{dataset}/task.json", config)
    return OutputRule(task.get("stop_string"), task.get("output_regex"))


def postprocess(text: str, rule: OutputRule) -> str:
    """The answer in generated text, as BIG-bench extracts it."""
    text = text.split(EXEMPLAR_SEPARATOR)[0]
    if rule.stop_string:
        index = text.find(rule.stop_string)
        if index > 0:
            text = text[:index + len(rule.stop_string)]
    if rule.output_regex:
        text = next(iter(re.findall(rule.output_regex, text)), "")
    return text


def exact_match(response: str, target: str | Sequence[str]) -> bool:
    """BIG-bench's exact_str_match: the response is the target (or one of the targets)."""
    return response in ([target] if isinstance(target, str) else list(target))


def score_pairs(model: LanguageModel, pairs: Sequence[tuple[int, str, str]]) -> np.ndarray:
    """log P(candidate | inputs) of each (example id, inputs, candidate), from one `model.score` call.

    Rows of one example id with the same inputs become one prompt with their candidates in order.
    """
    prompts: dict[tuple[int, str], list[int]] = {}
    for row, (example, inputs, _) in enumerate(pairs):
        prompts.setdefault((example, inputs), []).append(row)
    logprob = model.score([inputs for _, inputs in prompts],
                          [[pairs[r][2] for r in rows] for rows in prompts.values()])
    scores = np.empty(len(pairs), np.float64)
    for p, rows in enumerate(prompts.values()):
        scores[rows] = logprob[p, :len(rows)]
    return scores


def _prompt_and_target(features: Mapping[str, np.ndarray]) -> tuple[list[int], list[int]]:
    """A PrefixLM row's inputs (the tokens before the first loss-weighted one) and its targets."""
    tokens, weighted = features["decoder_target_tokens"], features["decoder_loss_weights"] > 0
    return tokens[:int(np.argmax(weighted))].tolist(), tokens[weighted].tolist()


def seqio_score_fn(model: DecoderModel) -> ScoreFn:
    """A `seqio.Evaluator` score_fn: each row's log P(targets | inputs) under a symtune Decoder.

    It reads `seqio.DecoderFeatureConverter(pack=False)` features (inputs + targets, loss weights
    on the targets) and scores them as `symtune eval` scores candidates, `model.batch_size` rows
    per forward pass.
    """

    def score_fn(dataset: tf.data.Dataset, model_feature_shapes: Mapping[str, Any] | None = None
                 ) -> list[tuple[int, float]]:
        del model_feature_shapes
        indices, prompts, targets = [], [], []
        for i, features in dataset.as_numpy_iterator():
            prompt, target = _prompt_and_target(features)
            indices.append(int(i))
            prompts.append(prompt)
            targets.append([target])
        if not indices:
            return []
        return list(zip(indices, model.score_ids(prompts, targets)[:, 0].tolist()))

    return score_fn


def rank_classify(model: LanguageModel, examples: Sequence[EvalExample]) -> list[dict]:
    """One record per example: index, predicted candidate, answer, and t5's verdict (correct)."""
    if not examples:
        return []
    from symtune.data.ranking import candidate_rows, rank_metric, rank_postprocessor

    rows = candidate_rows(examples)
    scores = score_pairs(model, [(int(r["idx"][0]), r["inputs"].decode(), r["targets"].decode())
                                 for r in rows])
    # The target tuple's length field holds the candidate's bytes here (seqio passes its tokens);
    # only normalize_by_target_length reads it, and rank classification here sums, never averages.
    targets = [rank_postprocessor(r["targets"], example=r, is_target=True) for r in rows]
    records = []
    for position, group in itertools.groupby(range(len(rows)), key=lambda r: int(rows[r]["idx"][0])):
        group = list(group)
        example, group_scores = examples[position], scores[group]
        correct = rank_metric([targets[r] for r in group], group_scores.tolist())["accuracy"] == 100
        records.append({"index": example.index, "predicted": int(np.argmax(group_scores)),
                        "answer": example.answer, "correct": bool(correct)})
    return records


def generate_and_match(model: LanguageModel, examples: Sequence[EvalExample],
                       config: DataConfig) -> list[dict]:
    """One record per example: index, (sub)task, generated text, post-processed response, target."""
    if not examples:
        return []
    stops = {EXEMPLAR_SEPARATOR} | {s for e in examples if (s := output_rule(e.dataset, config).stop_string)}
    outputs = model.generate([e.inputs for e in examples], sorted(stops))
    records = []
    for e, text in zip(examples, outputs):
        response = postprocess(text, output_rule(e.dataset, config))
        records.append({"index": e.index, "dataset": e.dataset, "output": text, "response": response,
                        "target": e.targets, "correct": exact_match(response, e.targets)})
    return records
