"""seqio Tasks over real data, evaluation examples, and BIG-bench."""

import itertools

import pytest
import seqio

from symtune.data.bigbench import list_functions, simp_turing_concept
from symtune.data.catalog import EVAL, TUNING
from symtune.data.evalsets import eval_examples
from symtune.data.tasks import (TUNING_MIXTURE, eval_settings, eval_task_name,
                                tuning_task_name)
from symtune.data.sources import DataConfig
from symtune.data.vocab import default_vocabulary
from symtune.errors import UserError


def test_registry_has_a_task_per_dataset_and_setting(registered):
    assert len([n for n in registered if n.startswith("symbol_tuning_")]) == 22
    binary = sum(s.is_binary for s in EVAL)
    assert len([n for n in registered if n.startswith("symbol_eval_")]) == 4 * 11 + binary
    mixture = seqio.get_mixture_or_task(TUNING_MIXTURE)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates["symbol_tuning_mnli"] == 25_000 and rates["symbol_tuning_cb"] == 250


def in_bundle(data_dir, spec, splits):
    return any((data_dir / spec.path / f"{s}.jsonl").is_file() for s in splits)


def test_tuning_tasks_render_real_rows(registered, data_dir):
    vocab = default_vocabulary()
    for spec in TUNING:
        if not in_bundle(data_dir, spec, spec.train_splits):
            continue
        task = seqio.get_mixture_or_task(tuning_task_name(spec))
        ds = task.get_dataset({"inputs": 2048, "targets": 32}, split="train", shuffle=False, seed=1)
        ex = next(ds.as_numpy_iterator())
        target = vocab.decode(ex["targets"].tolist())
        assert ex["targets"][-1] == vocab.eos_id and target
        assert target in ex["inputs_pretokenized"].decode()  # the symbol labels the exemplars


def test_eval_tasks_expand_each_query_into_its_candidates(registered, data_dir):
    task = seqio.get_mixture_or_task(eval_task_name(EVAL[8], "symbols"))
    assert task.name == "symbol_eval_sot_symbols"
    rows = list(itertools.islice(task.get_dataset({"inputs": 4096, "targets": 32}, split="validation",
                                                  shuffle=False).as_numpy_iterator(), 4))
    first = next(eval_examples("SOT", "symbols", config=DataConfig(data_dir=str(data_dir))))
    candidates = [r["targets_pretokenized"].decode() for r in rows[:3]]
    assert [r["idx"].tolist() for r in rows] == [[0, 0], [0, 1], [0, 2], [1, 0]]
    assert candidates == list(first.candidates) and len(candidates) == 3
    assert [bool(r["is_correct"]) for r in rows[:3]] == [j == first.answer for j in range(3)]
    assert candidates[first.answer] == first.targets
    assert {r["inputs_pretokenized"].decode() for r in rows[:3]} == {first.inputs}
    assert [int(r["index"]) for r in rows] == [0, 0, 0, 1] and first.index == 0


def test_eval_examples_cover_704_queries_in_every_setting(data_dir):
    config = DataConfig(data_dir=str(data_dir))
    for setting in ("instructions_natural", "symbols"):
        total = sum(len(list(eval_examples(s.name, setting, config=config))) for s in EVAL)
        assert total == 704
    for spec in EVAL:
        for setting in eval_settings(spec):
            ex = next(eval_examples(spec.name, setting, seed=1, config=config))
            assert ex.candidates[ex.answer] == ex.targets and ex.inputs.endswith(" ")
            assert ex.inputs.startswith(spec.instruction) == setting.startswith("instructions")


def test_eval_queries_are_fixed_across_seeds_and_settings(data_dir):
    config = DataConfig(data_dir=str(data_dir))
    a = list(eval_examples("TEH", "natural", seed=0, config=config))
    b = list(eval_examples("TEH", "symbols", seed=5, config=config))
    assert [x.answer for x in a] == [x.answer for x in b] and len(a) == 100
    assert a[0].inputs != list(eval_examples("TEH", "natural", seed=5, config=config))[0].inputs


def test_eval_budget_drops_exemplars_and_skips_impossible(data_dir):
    config = DataConfig(data_dir=str(data_dir))
    full = list(eval_examples("SOT", "natural", config=config))
    short = list(eval_examples("SOT", "natural", config=config, budget=1200))
    assert all(len(e.inputs) + len(e.targets) <= 1200 for e in short)
    assert sum(len(e.inputs) for e in short) < sum(len(e.inputs) for e in full)
    assert [e.targets for e in short] == [e.targets for e in full]  # queries kept
    assert list(eval_examples("SOT", "natural", config=config, budget=300)) == []  # impossible


def test_unknown_eval_setting_is_a_user_error(data_dir):
    with pytest.raises(UserError, match="unknown evaluation setting 'upside_down'"):
        next(eval_examples("TEH", "upside_down", config=DataConfig(data_dir=str(data_dir))))


def test_bigbench_list_functions_and_turing_concepts(data_dir):
    config = DataConfig(data_dir=str(data_dir))
    lf = list(list_functions(("c001", "c002"), config=config, template="Input/Output"))
    assert len(lf) == 64 and lf[0].inputs.count("Input: ") == 5 and lf[0].inputs.endswith("Output: ")
    assert lf[0].targets.startswith("[")
    assert sum(1 for _ in list_functions(config=config)) >= 250 * 30
    stc = list(simp_turing_concept(config=config))
    assert len(stc) == 85 and stc[0].targets.startswith("'")
    with pytest.raises(UserError, match="unknown List Functions subtask 'c999'"):
        next(list_functions(("c999",), config=config))
    with pytest.raises(UserError, match="unknown template 'Bogus/Thing'; choose 'random' or one of Input/Output"):
        next(list_functions(("c001",), config=config, template="Bogus/Thing"))


def test_list_functions_draw_one_template_per_prompt_from_the_symbol_tuning_templates(data_dir):
    from symtune.data.prompts import TEMPLATES

    config = DataConfig(data_dir=str(data_dir))
    prompts = list(list_functions(("c001", "c042"), config=config, seed=3))
    used = []
    for example in prompts:
        template = next(t for t in TEMPLATES if example.inputs.startswith(t.before_input)
                        and example.inputs.endswith(t.before_label))
        # The exemplars and the query share the prompt's template.
        assert example.inputs.count(template.before_label) == 5, example.inputs
        used.append(template.name)
    assert len(set(used)) >= len(TEMPLATES) // 2, used
    assert [e.inputs for e in list_functions(("c001", "c042"), config=config, seed=3)] == [e.inputs for e in prompts]
    assert [e.inputs for e in list_functions(("c001", "c042"), config=config, seed=4)] != [e.inputs for e in prompts]


def test_list_function_subtasks_are_selected_by_count_or_by_name(data_dir):
    from symtune.eval.suite import EvalConfig, Unit, unit_examples

    config = DataConfig(data_dir=str(data_dir))
    by_name = EvalConfig(tasks=("list_functions",), list_function_subtasks=("c042", "c007"), data=config)
    assert {e.dataset for e in unit_examples(Unit("list_functions", "exact_match"), 0, by_name)} == {
        "list_functions/c042", "list_functions/c007"}
    first = EvalConfig(tasks=("list_functions",), list_function_subtasks=1, data=config)
    assert {e.dataset for e in unit_examples(Unit("list_functions", "exact_match"), 0, first)} == {"list_functions/c001"}
    with pytest.raises(UserError, match="unknown List Functions subtask 'c251'"):
        EvalConfig(list_function_subtasks=("c251",))
    with pytest.raises(UserError, match="list_function_subtasks=0: choose 1..250"):
        EvalConfig(list_function_subtasks=0)
