"""What the evaluation suite runs: `EvalConfig` (gin) and the (task, setting) units it expands to.

Classification tasks are the 11 held-out datasets (paper abbreviations), each in the four
settings of Table 1 plus `flipped` on the binary ones; BIG-bench tasks (`list_functions`,
`simp_turing_concept`) are one generation unit each. A unit's prompts depend only on the
config, the seed and the model's length budget, so a rerun renders the same prompts.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Callable, Iterator

import gin

from symtune.data.bigbench import (BIGBENCH_TASKS, LIST_FUNCTION_SUBTASKS, RANDOM_TEMPLATE, bigbench_examples,
                                   list_function_subtasks, list_function_template, list_functions)
from symtune.data.catalog import EVAL, get_spec
from symtune.data.evalsets import EvalExample, eval_examples
from symtune.data.prompts import SETTINGS, Prompt, count_characters
from symtune.data.sources import DataConfig
from symtune.errors import UserError

CLASSIFICATION_TASKS = tuple(spec.name for spec in EVAL)
TABLE1_SETTINGS = ("instructions_natural", "natural", "instructions_symbols", "symbols")
FLIPPED = "flipped"
GENERATION = "exact_match"  # the setting name of a BIG-bench unit


@gin.configurable
@dataclass(frozen=True)
class EvalConfig:
    """Which tasks, settings and seeds to evaluate, how many examples, and how to score them."""

    tasks: tuple[str, ...] = CLASSIFICATION_TASKS + BIGBENCH_TASKS
    settings: tuple[str, ...] = TABLE1_SETTINGS + (FLIPPED,)  # flipped runs on binary tasks only
    seeds: tuple[int, ...] = (0,)  # exemplar draws, templates and symbol mappings
    max_examples: int | None = None  # per unit and seed (None: all, at most 100 per dataset)
    list_function_subtasks: int | tuple[str, ...] = len(LIST_FUNCTION_SUBTASKS)  # the first N of c001..c250, or names
    list_function_template: str = RANDOM_TEMPLATE  # drawn per prompt, or a template's name ("Input/Output")
    max_length: int = 2048  # tokens of prompt + candidate; exemplars are dropped to fit
    max_decode_tokens: int = 32  # BIG-bench answers
    batch_size: int = 16
    score_eos: bool | None = None  # end candidates with EOS (None: yes for our checkpoints)
    prefix_lm: bool | None = None  # bidirectional attention over the prompt (None: as the run trained; HF: no)
    dtype: str | None = None  # compute dtype (None: the model's; float32 is faster on CPU)
    vocabulary: str | None = None  # None: the run's, or the HF directory's tokenizer
    model_name: str | None = None  # the row name in reports (None: the directory name)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    def __post_init__(self):
        tasks = tuple(canonical_task(t) for t in self.tasks)
        settings = tuple(self.settings)
        unknown = [s for s in settings if s not in SETTINGS]
        if unknown:
            raise UserError(f"unknown evaluation setting {unknown[0]!r}; choose from {', '.join(SETTINGS)}")
        if not tasks:
            raise UserError("EvalConfig.tasks is empty; name at least one task")
        for name in ("max_examples", "max_length", "max_decode_tokens", "batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"EvalConfig.{name} must be positive (got {value})")
        if not self.seeds:
            raise UserError("EvalConfig.seeds is empty; give at least one seed")
        subtasks = list_function_subtasks(self.list_function_subtasks)
        list_function_template(self.list_function_template)
        if not isinstance(self.list_function_subtasks, int):
            object.__setattr__(self, "list_function_subtasks", subtasks)
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "settings", settings)
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))

    def scoring_fields(self) -> dict:
        """The fields a unit's result depends on (what makes a saved result reusable)."""
        skip = {"tasks", "settings", "batch_size", "model_name", "data"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


def canonical_task(name: str) -> str:
    """A task name as reports spell it (dataset abbreviations upper-case); UserError if unknown."""
    if name in BIGBENCH_TASKS:
        return name
    if name.upper() in CLASSIFICATION_TASKS:
        return name.upper()
    raise UserError(f"unknown evaluation task {name!r}; choose from "
                    f"{', '.join(CLASSIFICATION_TASKS + BIGBENCH_TASKS)}")


@dataclass(frozen=True)
class Unit:
    """One task in one setting: the granularity of scoring, saving and resuming."""

    task: str
    setting: str

    @property
    def generative(self) -> bool:
        return self.setting == GENERATION

    @property
    def name(self) -> str:
        return f"{self.task}.{self.setting}"


def units(config: EvalConfig) -> list[Unit]:
    """The config's units in report order; flipped only where the task is binary."""
    out = []
    for task in config.tasks:
        if task in BIGBENCH_TASKS:
            out.append(Unit(task, GENERATION))
            continue
        out += [Unit(task, s) for s in config.settings if s != FLIPPED or get_spec(task).is_binary]
    return out


def unit_examples(unit: Unit, seed: int, config: EvalConfig, budget: int | None = None,
                  count: Callable[[Prompt], int] = count_characters) -> list[EvalExample]:
    """The rendered examples of a unit for one seed (classification prompts fit `budget`)."""
    examples: Iterator[EvalExample]
    if unit.task == "list_functions":
        examples = list_functions(config.list_function_subtasks, seed=seed, config=config.data,
                                  template=config.list_function_template)
    elif unit.generative:
        examples = bigbench_examples(unit.task, seed, config.data)
    else:
        examples = eval_examples(unit.task, unit.setting, seed, config.data, budget=budget, count=count)
    return list(itertools.islice(examples, config.max_examples))
