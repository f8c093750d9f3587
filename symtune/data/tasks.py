"""seqio Tasks and the tuning Mixture, named after the catalog.

- `symbol_tuning_<abbr>`: endless symbol-tuning prompts from one tuning dataset's training split.
- `symbol_tuning`: the Mixture over the 22, rates proportional to min(train size, 25K).
- `symbol_eval_<abbr>_<setting>`: rendered evaluation prompts (the four settings, plus `flipped`
  for binary datasets), scored the T5X way: t5's `rank_classification` preprocessor expands each
  prompt into one example per candidate label (`idx`, `is_correct`, the query's `index`), t5's
  `rank_classification` postprocessor and metric give the accuracy, so `seqio.Evaluator` with any
  model's `score_fn` evaluates them (see `symtune.data.ranking`).
- `bigbench_list_functions`, `bigbench_simp_turing_concept`: BIG-bench generation tasks (text
  features only; `symtune eval` scores them by exact match).

Data are read lazily, when a dataset is first asked for, so registering is cheap and offline.
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Iterable

import seqio
import tensorflow as tf

from symtune.data.bigbench import BIGBENCH_TASKS, bigbench_examples
from symtune.data.catalog import EVAL, MAX_TRAIN_EXAMPLES, TUNING, DatasetSpec
from symtune.data.evalsets import EvalExample, eval_examples
from symtune.data.prompts import SETTINGS, TUNING_SETTING, TuningMixture, get_setting, prompt_rng
from symtune.data.ranking import examples_dataset, expand_candidates, rank_metric, rank_postprocessor
from symtune.data.sources import DataConfig, DatasetNotFound, load_examples
from symtune.data.symbols import tuning_pool
from symtune.data.vocab import default_vocabulary
from symtune.errors import UserError

TUNING_MIXTURE = "symbol_tuning"


def tuning_task_name(spec: DatasetSpec) -> str:
    return f"symbol_tuning_{spec.name.lower()}"


def eval_task_name(spec: DatasetSpec, setting: str) -> str:
    return f"symbol_eval_{spec.name.lower()}_{setting}"


def mixture_rate(spec: DatasetSpec) -> int:
    return min(spec.train_size, MAX_TRAIN_EXAMPLES)


def eval_settings(spec: DatasetSpec) -> list[str]:
    """The settings a dataset is evaluated in: flipped labels only for binary datasets."""
    return [s.name for s in SETTINGS.values() if spec.is_binary or not s.flipped]


def tuning_specs(name: str) -> tuple[DatasetSpec, ...]:
    """The tuning datasets behind a mixture or task name (or a bare abbreviation)."""
    if name == TUNING_MIXTURE:
        return TUNING
    for spec in TUNING:
        if name in (tuning_task_name(spec), spec.name, spec.name.lower()):
            return (spec,)
    raise UserError(f"unknown tuning mixture or task {name!r}; use {TUNING_MIXTURE} or one of "
                    f"{', '.join(tuning_task_name(s) for s in TUNING)}")


def load_tuning_mixture(name: str, config: DataConfig | None = None, skip_missing: bool = False,
                        setting: str = TUNING_SETTING) -> tuple[TuningMixture, list[str]]:
    """The prompt sampler for `name` (prompts rendered in `setting`), and the datasets left out
    because no source has them."""
    loaded, rates, missing = [], [], []
    for spec in tuning_specs(name):
        try:
            loaded.append(load_examples(spec, config=config))
        except DatasetNotFound:
            if not skip_missing:
                raise
            missing.append(spec.name)
            continue
        rates.append(mixture_rate(spec))
    if not loaded:
        raise DatasetNotFound(f"none of the datasets of {name} is available ({', '.join(missing)}); "
                              "provide them with `symtune data export --download --out DIR` and "
                              "set SYMTUNE_DATA_DIR=DIR")
    return TuningMixture(loaded, rates, tuning_pool(), get_setting(setting)), missing


# ---------------------------------------------------------------- seqio registration

def _features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=False),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }


_TEXT_SIGNATURE = {"inputs": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string)}


def _tuning_source(spec: DatasetSpec) -> seqio.DataSource:
    @functools.cache
    def mixture() -> TuningMixture:
        return load_tuning_mixture(spec.name)[0]

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del split, shuffle_files  # endless prompts; the seed alone fixes their order

        def generate():
            for i in itertools.count():
                prompt = mixture().prompt(prompt_rng(seed or 0, i))
                yield {"inputs": prompt.inputs, "targets": prompt.targets}

        return tf.data.Dataset.from_generator(generate, output_signature=_TEXT_SIGNATURE)

    return seqio.FunctionDataSource(dataset_fn, splits=("train",))


def _eval_source(examples: Callable[[int], Iterable[EvalExample]]) -> seqio.DataSource:
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del split, shuffle_files
        return examples_dataset(lambda: examples(seed or 0))

    return seqio.FunctionDataSource(dataset_fn, splits=("validation",))


def _add_task(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary, *,
              rank_classification: bool = False) -> None:
    """A text-to-text Task; with `rank_classification`, one example per candidate and t5's metric."""
    scoring = dict(postprocess_fn=rank_postprocessor, metric_fns=[rank_metric]) if rank_classification else {}
    expand = [expand_candidates] if rank_classification else []
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source, output_features=_features(vocabulary), preprocessors=[
        *expand, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim], **scoring)


def register_tasks(vocabulary: seqio.Vocabulary | None = None) -> list[str]:
    """Registers every Task and the tuning Mixture (again, if called again); returns task names."""
    vocabulary = vocabulary or default_vocabulary()
    names = []
    for spec in TUNING:
        _add_task(tuning_task_name(spec), _tuning_source(spec), vocabulary)
        names.append(tuning_task_name(spec))
    seqio.MixtureRegistry.remove(TUNING_MIXTURE)
    seqio.MixtureRegistry.add(TUNING_MIXTURE,
                              [(tuning_task_name(s), mixture_rate(s)) for s in TUNING])
    for spec in EVAL:
        for setting in eval_settings(spec):
            examples = functools.partial(eval_examples, spec.name, setting)
            _add_task(eval_task_name(spec, setting),
                      _eval_source(lambda seed, ex=examples: ex(seed=seed)), vocabulary,
                      rank_classification=True)
            names.append(eval_task_name(spec, setting))
    for task in BIGBENCH_TASKS:
        _add_task(f"bigbench_{task}",
                  _eval_source(lambda seed, t=task: bigbench_examples(t, seed=seed)), vocabulary)
        names.append(f"bigbench_{task}")
    return names
