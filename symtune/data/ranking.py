"""Rank classification as T5 scores it: shared by the seqio eval tasks and `symtune eval`.

Rendered evaluation examples become a tf.data.Dataset (`examples_dataset`), which t5's
`rank_classification` preprocessor (mode "eval") expands into one example per candidate
(`expand_candidates`): `inputs` (the prompt), `targets` (the candidate label string), `idx`
([example position, candidate position]), `is_correct`, and the query's `index` passed through.
A model scores each row with log P(targets | inputs). t5's `rank_classification` postprocessor
(`rank_postprocessor`) turns a row into the metric's target tuple (idx, is_correct, weight,
target length), and t5's `rank_classification` metric (`rank_metric`, called with
`num_classes=None`, the default) predicts per example the candidate with the highest score
(`np.argmax` over the candidates in idx order, so ties go to the first) and returns
{"accuracy": percent}.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import t5.data.postprocessors
import t5.data.preprocessors
import t5.evaluation.metrics
import tensorflow as tf

from symtune.data.evalsets import EvalExample

EXAMPLE_SIGNATURE = {
    "inputs": tf.TensorSpec([], tf.string),
    "targets": tf.TensorSpec([], tf.string),
    "candidates": tf.TensorSpec([None], tf.string),
    "answer": tf.TensorSpec([], tf.int32),
    "index": tf.TensorSpec([], tf.int32),
}
PASSTHROUGH_FEATURES = ("index",)  # maps each row back to its query in the dataset

rank_postprocessor = t5.data.postprocessors.rank_classification
rank_metric = t5.evaluation.metrics.rank_classification


def examples_dataset(examples: Callable[[], Iterable[EvalExample]]) -> tf.data.Dataset:
    """The examples as text features: inputs, targets, candidates, answer, index.

    `examples` is called each time the dataset is iterated, so every pass sees all of them.
    """

    def generate():
        for ex in examples():
            yield {"inputs": ex.inputs, "targets": ex.targets, "candidates": list(ex.candidates),
                   "answer": ex.answer, "index": ex.index}

    return tf.data.Dataset.from_generator(generate, output_signature=EXAMPLE_SIGNATURE)


def _inputs(ex: dict[str, tf.Tensor]) -> tf.Tensor:
    return tf.fill(tf.shape(ex["candidates"]), ex["inputs"])


def _targets(ex: dict[str, tf.Tensor]) -> tf.Tensor:
    return ex["candidates"]


def _is_correct(ex: dict[str, tf.Tensor]) -> tf.Tensor:
    return tf.equal(tf.range(tf.size(ex["candidates"])), ex["answer"])


def expand_candidates(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """t5's rank_classification preprocessor over `examples_dataset` rows: one row per candidate."""
    return t5.data.preprocessors.rank_classification(
        dataset, inputs_fn=_inputs, targets_fn=_targets, is_correct_fn=_is_correct, mode="eval",
        passthrough_feature_keys=PASSTHROUGH_FEATURES)


def candidate_rows(examples: Sequence[EvalExample]) -> list[dict[str, np.ndarray]]:
    """The expanded rows of `examples` as numpy (idx[0] is the example's position in `examples`)."""
    return list(expand_candidates(examples_dataset(lambda: examples)).as_numpy_iterator())
