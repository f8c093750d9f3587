"""`symtune data export | inspect`: prepare a local data copy; look at rendered examples."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Iterator

import symtune.data.special_tokens  # noqa: F401  SpecialTokens, for `inspect --vocabulary=hf:DIR`
from symtune.errors import UserError

USES_GIN = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="write datasets as JSONL (HF schema) + MANIFEST.json")
    export.add_argument("--out", required=True, help="the export directory to write")
    export.add_argument("--datasets", default="all",
                        help="comma-separated catalog names (RTE,SUBJ,...), `tuning`, `eval` or `all`")
    export.add_argument("--download", action="store_true",
                        help="let TFDS download and use the Hugging Face hub (network)")
    export.add_argument("--tfds_data_dir", default=None, help="TFDS data directory")
    inspect = sub.add_parser("inspect", help="print rendered examples of a task or mixture")
    inspect.add_argument("task", help="symbol_tuning, symbol_tuning_<abbr>, symbol_eval_<abbr>_"
                                      "<setting> or bigbench_<task>")
    inspect.add_argument("-n", type=int, default=5, help="how many examples")
    inspect.add_argument("--seed", type=int, default=0)
    inspect.add_argument("--vocabulary", default="default",
                         help="default, byte, spm:PATH or hf:PATH (for token counts)")


def selected_specs(names: str):
    from symtune.data.catalog import CATALOG, EVAL, TUNING, get_spec

    groups = {"all": tuple(CATALOG.values()), "tuning": TUNING, "eval": EVAL}
    if names in groups:
        return groups[names]
    return tuple(get_spec(n.strip()) for n in names.split(",") if n.strip())


def run_export(args: argparse.Namespace) -> int:
    from symtune.data.export import export_dataset, write_manifest
    from symtune.data.sources import DataConfig, DatasetNotFound

    out = Path(args.out)
    config = DataConfig(tfds_data_dir=args.tfds_data_dir, download=args.download)
    entries, failed = [], []
    for spec in selected_specs(args.datasets):
        try:
            written = export_dataset(spec, out, config)
        except DatasetNotFound as e:
            failed.append(str(e))
            continue
        entries += written
        for e in written:
            print(f"{spec.name}: {e['path']} ({e['rows']} rows)")
    print(f"manifest: {write_manifest(out, entries)}")
    for message in failed:
        print(f"skipped: {message}")
    return 1 if failed else 0


def rendered(task: str, n: int, seed: int) -> Iterator[tuple[str, str]]:
    """(inputs, targets) of the first n examples of any registered task name."""
    from symtune.data.bigbench import BIGBENCH_TASKS, bigbench_examples
    from symtune.data.catalog import EVAL
    from symtune.data.evalsets import eval_examples
    from symtune.data.prompts import prompt_rng
    from symtune.data.tasks import eval_settings, eval_task_name, load_tuning_mixture

    if task.startswith("bigbench_") and task[len("bigbench_"):] in BIGBENCH_TASKS:
        examples = bigbench_examples(task[len("bigbench_"):], seed=seed)
        yield from ((e.inputs, e.targets) for e in itertools.islice(examples, n))
        return
    for spec in EVAL:
        for setting in eval_settings(spec):
            if task == eval_task_name(spec, setting):
                examples = eval_examples(spec.name, setting, seed=seed)
                yield from ((e.inputs, e.targets) for e in itertools.islice(examples, n))
                return
    if not task.startswith("symbol_tuning"):
        raise UserError(f"unknown task {task!r}; use symbol_tuning, symbol_tuning_<abbr>, "
                        "symbol_eval_<abbr>_<setting> or bigbench_<task> "
                        f"({', '.join('bigbench_' + t for t in BIGBENCH_TASKS)})")
    mixture, _ = load_tuning_mixture(task)
    for i in range(n):
        prompt = mixture.prompt(prompt_rng(seed, 0, 0, i))
        yield prompt.inputs, prompt.targets


def run_inspect(args: argparse.Namespace) -> int:
    from symtune.data.encoding import encode_prompt
    from symtune.data.vocab import get_vocabulary

    vocabulary = get_vocabulary(args.vocabulary)
    for i, (inputs, targets) in enumerate(rendered(args.task, args.n, args.seed)):
        input_ids, (target_ids,) = encode_prompt(vocabulary, inputs, [targets])
        print(f"=== {args.task} example {i} ===")
        print(inputs + f"[{targets}]")
        print(f"--- target: {targets!r} | tokens: inputs {len(input_ids)}, "
              f"targets {len(target_ids)}\n")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_export(args) if args.action == "export" else run_inspect(args)
