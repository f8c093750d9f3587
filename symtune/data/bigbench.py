"""BIG-bench algorithmic tasks read from their task.json files in the data directory.

List Functions: each subtask (`c001`..`c250`, selectable by name) is a hidden function over
integer lists; a query gets `shots` other examples of the same subtask as exemplars, written in a
template drawn at random per prompt from the symbol-tuning templates (as the symbol-tuning paper
prompts its BIG-bench tasks; seeded), or in one named template. Simple Turing
Concepts (`additional_set_2`): each example's input already holds its exemplars; concepts are kept
when their P3 program has at most `max_instructions` instructions (the second entry of the
example's `comment`). These files carry the BIG-bench canary: evaluation only, never training.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Iterator, Sequence

from symtune.data.evalsets import EvalExample
from symtune.data.prompts import EXEMPLAR_SEPARATOR, TEMPLATES, Template, prompt_rng
from symtune.data.sources import DataConfig, verified_path
from symtune.errors import UserError

BIGBENCH_TASKS = ("list_functions", "simp_turing_concept")
LIST_FUNCTION_SUBTASKS = tuple(f"c{i:03d}" for i in range(1, 251))
LIST_FUNCTION_SHOTS = 4
TURING_CONCEPT_SUBSET = "additional_set_2"
RANDOM_TEMPLATE = "random"


def read_task(relpath: str, config: DataConfig) -> dict:
    """One task.json of the data directory, checked against its manifest."""
    local = config.local_dir
    path = verified_path(local, relpath) if local is not None else None
    if path is None:
        where = local / relpath if local is not None else "(no data directory: $SYMTUNE_DATA_DIR unset)"
        raise UserError(f"BIG-bench file {relpath} not found at {where}; copy bigbench/ from the "
                        "BIG-bench sources into the data directory and list it in MANIFEST.json")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def list_function_subtasks(selection: int | Sequence[str]) -> tuple[str, ...]:
    """The subtasks a selection names: the first N of c001..c250, or subtask names."""
    if isinstance(selection, int):
        if not 1 <= selection <= len(LIST_FUNCTION_SUBTASKS):
            raise UserError(f"list_function_subtasks={selection}: choose 1..{len(LIST_FUNCTION_SUBTASKS)} "
                            "or name subtasks, e.g. ('c001', 'c042')")
        return LIST_FUNCTION_SUBTASKS[:selection]
    unknown = [s for s in selection if s not in LIST_FUNCTION_SUBTASKS]
    if unknown or not selection:
        raise UserError(f"unknown List Functions subtask {unknown[0] if unknown else '(none)'!r}; "
                        "use names c001..c250")
    return tuple(selection)


def list_function_template(name: str) -> Template | None:
    """The named template, or None for a random draw per prompt."""
    if name == RANDOM_TEMPLATE:
        return None
    for template in TEMPLATES:
        if template.name == name:
            return template
    raise UserError(f"unknown template {name!r}; choose {RANDOM_TEMPLATE!r} or one of "
                    f"{', '.join(t.name for t in TEMPLATES)}")


def list_functions(subtasks: int | Sequence[str] = LIST_FUNCTION_SUBTASKS, shots: int = LIST_FUNCTION_SHOTS,
                   seed: int = 0, config: DataConfig | None = None,
                   template: str = RANDOM_TEMPLATE) -> Iterator[EvalExample]:
    """Every example of the chosen subtasks as a `shots`-shot prompt in `template` (a name from
    symtune.data.prompts.TEMPLATES, or "random": one drawn per prompt)."""
    config = config or DataConfig()
    fixed = list_function_template(template)
    for number, subtask in enumerate(list_function_subtasks(subtasks)):
        examples = read_task(f"bigbench/list_functions/{subtask}/task.json", config)["examples"]
        for index, query in enumerate(examples):
            rng = prompt_rng(seed, number, index)
            chosen = fixed or rng.choice(TEMPLATES)
            others = [e for i, e in enumerate(examples) if i != index]
            pairs = [chosen.pair(e["input"], e["target"]) for e in rng.sample(others, shots)]
            inputs = EXEMPLAR_SEPARATOR.join(pairs + [chosen.pair(query["input"], "")])
            yield EvalExample(f"list_functions/{subtask}", f"{shots}_shot", index, inputs,
                              query["target"], (), -1)


def simp_turing_concept(max_instructions: int = 3, config: DataConfig | None = None,
                        ) -> Iterator[EvalExample]:
    """The `additional_set_2` examples whose concept program is short enough."""
    task = read_task(f"bigbench/simp_turing_concept/{TURING_CONCEPT_SUBSET}/task.json",
                     config or DataConfig())
    kept = (e for e in task["examples"] if ast.literal_eval(e["comment"])[1] <= max_instructions)
    for index, example in enumerate(kept):
        yield EvalExample(f"simp_turing_concept/{TURING_CONCEPT_SUBSET}", "given", index,
                          example["input"] + " ", example["target"], (), -1)


def bigbench_examples(task: str, seed: int = 0, config: DataConfig | None = None,
                      ) -> Iterator[EvalExample]:
    """The rendered examples of one BIG-bench task with its default options."""
    if task == "list_functions":
        return list_functions(seed=seed, config=config)
    if task == "simp_turing_concept":
        return simp_turing_concept(config=config)
    raise UserError(f"unknown BIG-bench task {task!r}; choose from {', '.join(BIGBENCH_TASKS)}")
