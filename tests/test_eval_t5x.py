"""The seqio eval tasks scored the T5X way: seqio.Evaluator agrees with `symtune eval`."""

import functools

import numpy as np
import pytest
import seqio
from flax import nnx

from symtune.data.catalog import get_spec
from symtune.data.encoding import encode_prompt
from symtune.data.ranking import rank_metric, rank_postprocessor
from symtune.data.sources import DataConfig
from symtune.data.tasks import eval_task_name
from symtune.data.vocab import default_vocabulary
from symtune.eval.evaluate import render_unit, score_unit
from symtune.eval.metrics import seqio_score_fn
from symtune.eval.runner import DecoderModel, on_mesh
from symtune.eval.suite import EvalConfig, Unit
from symtune.models.decoder import Decoder
from symtune.models.presets import get_preset
from symtune.train.mesh import MeshConfig, logical_rules, make_mesh

UNITS = (Unit("SUBJ", "symbols"), Unit("TC", "natural"), Unit("TEAB", "instructions_symbols"))
QUERIES = 6  # per task
MAX_LENGTH = 1024  # above every prompt + candidate of these queries, so no exemplar is dropped


@pytest.fixture(scope="module")
def model():
    vocab = default_vocabulary()
    mesh = make_mesh(MeshConfig())
    context = functools.partial(on_mesh, mesh, logical_rules("dp"))
    with context():
        decoder = Decoder(get_preset("test-tiny").replace(vocab_size=vocab.vocab_size), rngs=nnx.Rngs(3))
    return DecoderModel(decoder, vocab, context, max_length=MAX_LENGTH, max_decode_tokens=8, batch_size=8,
                        score_eos=True)


def task_of(unit):
    return eval_task_name(get_spec(unit.task), unit.setting)


def test_eval_tasks_carry_t5_rank_classification_fields(registered, data_dir):
    task = seqio.get_mixture_or_task(task_of(UNITS[2]))
    assert task.postprocessor is rank_postprocessor and task.metric_fns == [rank_metric]
    rows = list(task.get_dataset(None, split="validation", shuffle=False, seed=0).take(2 * 3).as_numpy_iterator())
    assert {"idx", "is_correct", "index", "inputs", "targets"} <= set(rows[0])
    assert [r["idx"].tolist() for r in rows] == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    for query in (rows[:3], rows[3:]):
        assert sum(bool(r["is_correct"]) for r in query) == 1  # one example per candidate, one right
        assert len({r["inputs_pretokenized"] for r in query}) == 1
        assert len({r["targets_pretokenized"] for r in query}) == 3
        assert len({int(r["index"]) for r in query}) == 1
    assert rows[0]["targets"][-1] == default_vocabulary().eos_id


def rows_by_query(rows):
    """[(inputs, candidates, answer, index)] of a task's expanded rows, one per query."""
    queries = {}
    for r in rows:
        q = queries.setdefault(int(r["idx"][0]), [r["inputs_pretokenized"].decode(), [], None, int(r["index"])])
        q[1].append(r["targets_pretokenized"].decode())
        if r["is_correct"]:
            q[2] = int(r["idx"][1])
    return [(inputs, tuple(c), answer, index) for inputs, c, answer, index in queries.values()]


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_seqio_evaluator_scores_like_symtune_eval(unit, registered, model, data_dir):
    config = EvalConfig(tasks=(unit.task,), settings=(unit.setting,), max_examples=QUERIES,
                        max_length=MAX_LENGTH, data=DataConfig(data_dir=str(data_dir)))
    examples = render_unit(model, unit, config)[0]
    ours = score_unit(model, unit, config, {0: examples})
    classes = len(get_spec(unit.task).labels)
    evaluator = seqio.Evaluator(task_of(unit), seqio.DecoderFeatureConverter(pack=False), seed=0,
                                num_examples=QUERIES * classes, async_compute_metrics=False)
    rows = list(evaluator.cached_task_datasets[task_of(unit)].as_numpy_iterator())

    # The same queries, rendered the same way, tokenized as symtune eval tokenizes them.
    assert rows_by_query(rows) == [(e.inputs, e.candidates, e.answer, e.index) for e in examples]
    assert len(examples) == QUERIES and len(rows) == QUERIES * classes
    for e, first in zip(examples, rows[::classes]):
        prompt, candidates = encode_prompt(model.vocabulary, e.inputs, e.candidates)
        assert first["inputs"].tolist() == prompt and first["targets"].tolist() == candidates[0]

    metrics, outputs = evaluator.evaluate(compute_metrics=True, score_fn=seqio_score_fn(model))
    accuracy = metrics.result()[task_of(unit)]["accuracy"]
    assert accuracy == ours["accuracy"] and ours["total"] == QUERIES
    scores = np.array(outputs[task_of(unit)][seqio.metrics.ModelOutputType.SCORE]).reshape(QUERIES, classes)
    records = ours["seeds"]["0"]["records"]
    assert [r["predicted"] for r in records] == scores.argmax(axis=1).tolist()
    assert [r["correct"] for r in records] == [r["predicted"] == r["answer"] for r in records]
