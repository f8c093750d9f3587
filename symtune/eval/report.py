"""Reports of a suite run: eval.json (every number), eval.md (paper Table 1 layout + per-task
tables), PNG bar charts; and the comparison of two runs with deltas, as the paper prints them.

Averages are macro averages of per-task accuracies (%) over the classification tasks that have
a result in a setting; "Random guessing" is the same average of 100 / number of labels (42.4
over all 11 held-out tasks), 50 for flipped labels.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np
from etils import epath

from symtune.data.bigbench import BIGBENCH_TASKS
from symtune.data.catalog import get_spec
from symtune.data.evalsets import QUERY_SELECTION_SEED
from symtune.errors import UserError
from symtune.eval.evaluate import UnitResult, write_json
from symtune.eval.suite import FLIPPED, GENERATION, TABLE1_SETTINGS, EvalConfig

Summary = dict[str, Any]
SETTING_TITLES = {
    "instructions_natural": "Instructions ✓ Relevant labels ✓",
    "natural": "Instructions ✗ Relevant labels ✓",
    "instructions_symbols": "Instructions ✓ Relevant labels ✗",
    "symbols": "Instructions ✗ Relevant labels ✗",
    FLIPPED: "Flipped labels",
    GENERATION: "Exact match",
}
CLASSIFICATION_SETTINGS = TABLE1_SETTINGS + (FLIPPED,)
REPORT_FILES = ("eval.json", "eval.md", "eval_averages.png", "eval_tasks.png")


def _chance(task: str, setting: str) -> float:
    return 50.0 if setting == FLIPPED else 100.0 / len(get_spec(task).labels)


def summarize(results: Mapping[str, UnitResult], config: EvalConfig, model_name: str,
              source: Mapping[str, Any]) -> Summary:
    """The eval.json content: per task and setting counts, averages, chance, seeds, config."""
    tasks: dict[str, dict[str, Any]] = {}
    for result in results.values():
        seeds = {seed: {"correct": s["correct"], "total": s["total"]} for seed, s in result["seeds"].items()}
        tasks.setdefault(result["task"], {})[result["setting"]] = {
            "accuracy": result["accuracy"], "correct": result["correct"], "total": result["total"],
            "seeds": seeds}
    averages = {}
    for setting in CLASSIFICATION_SETTINGS:
        scored = [t for t, by in tasks.items() if t not in BIGBENCH_TASKS
                  and by.get(setting, {}).get("accuracy") is not None]
        if scored:
            averages[setting] = {
                "accuracy": float(np.mean([tasks[t][setting]["accuracy"] for t in scored])),
                "chance": float(np.mean([_chance(t, setting) for t in scored])),
                "tasks": scored}
    summary = {"model": model_name, "source": dict(source), "seeds": list(config.seeds),
               "query_selection_seed": QUERY_SELECTION_SEED,
               "config": {**config.scoring_fields(), "tasks": config.tasks, "settings": config.settings},
               "averages": averages, "tasks": tasks}
    return json.loads(json.dumps(summary))  # JSON types (tuples as lists), as eval.json holds it


def _cell(value: float | None, base: float | None = None) -> str:
    if value is None:
        return "–"
    if base is None:
        return f"{value:.1f}"
    return f"{value:.1f} ({value - base:+.1f})"


def _average(summary: Summary, setting: str, key: str = "accuracy") -> float | None:
    return summary["averages"].get(setting, {}).get(key)


def _bigbench(summary: Summary, task: str) -> float | None:
    return summary["tasks"].get(task, {}).get(GENERATION, {}).get("accuracy")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _model_rows(summaries: Sequence[Summary], values) -> list[list[str]]:
    """One row per model of `values(summary)`; rows after the first with deltas against it."""
    base = values(summaries[0])
    return [[x["model"], *(_cell(v, None if i == 0 else b) for v, b in zip(values(x), base))]
            for i, x in enumerate(summaries)]


def model_tables(summaries: Sequence[Summary]) -> list[str]:
    """Table 1 (one row per model), flipped labels and BIG-bench; rows after the first show deltas."""
    first = summaries[0]
    columns = [s for s in TABLE1_SETTINGS if any(s in x["averages"] for x in summaries)]
    lines: list[str] = []
    if columns:
        counts = sorted({len(x["averages"][s]["tasks"]) for x in summaries for s in columns
                         if s in x["averages"]})
        tasks = f"{'/'.join(map(str, counts))} task{'' if counts == [1] else 's'}"
        lines += [f"Accuracy (%) averaged over the held-out tasks ({tasks}).", ""]
        rows = [["Random guessing", *(_cell(_average(first, s, "chance")) for s in columns)]]
        rows += _model_rows(summaries, lambda x: [_average(x, s) for s in columns])
        lines += _table(["Model", *(SETTING_TITLES[s] for s in columns)], rows) + [""]
    if any(FLIPPED in x["averages"] for x in summaries):
        lines += ["Flipped labels: accuracy (%) on the binary tasks, exemplar labels swapped.", ""]
        rows = [["Random guessing", _cell(_average(first, FLIPPED, "chance"))]]
        rows += _model_rows(summaries, lambda x: [_average(x, FLIPPED)])
        lines += _table(["Model", SETTING_TITLES[FLIPPED]], rows) + [""]
    bigbench = [t for t in BIGBENCH_TASKS if any(t in x["tasks"] for x in summaries)]
    if bigbench:
        lines += ["BIG-bench: exact match (%).", ""]
        rows = _model_rows(summaries, lambda x: [_bigbench(x, t) for t in bigbench])
        lines += _table(["Model", *bigbench], rows) + [""]
    return lines


def task_table(summary: Summary, base: Summary | None = None) -> list[str]:
    """Per-task accuracy (%) with correct/total, or with deltas against `base`."""
    settings = [s for s in CLASSIFICATION_SETTINGS + (GENERATION,)
                if any(s in by for by in summary["tasks"].values())]
    rows = []
    for task, by in summary["tasks"].items():
        cells = []
        for s in settings:
            entry = by.get(s)
            if entry is None:
                cells.append("–")
            elif base is None:
                cells.append(f"{_cell(entry['accuracy'])} ({entry['correct']}/{entry['total']})")
            else:
                cells.append(_cell(entry["accuracy"], base["tasks"].get(task, {}).get(s, {}).get("accuracy")))
        rows.append([task, *cells])
    return _table(["Task", *(SETTING_TITLES[s] for s in settings)], rows)


def markdown(summary: Summary) -> str:
    """eval.md: what was evaluated, the model tables, per-task results."""
    config = summary["config"]
    limit = f"up to {config['max_examples']}" if config["max_examples"] else "all (at most 100)"
    lines = [f"# In-context evaluation: {summary['model']}", "",
             f"Model: `{json.dumps(summary['source'])}`. Seeds (exemplars, templates, symbols): "
             f"{', '.join(map(str, summary['seeds']))}; query selection seed "
             f"{summary['query_selection_seed']}. Examples per task, setting and seed: {limit}.", "",
             "## Averages", "", *model_tables([summary]),
             "## Per task", "", "Accuracy (%) and correct/total over all seeds.", "",
             *task_table(summary), ""]
    return "\n".join(lines)


def compare_markdown(base: Summary, new: Summary) -> str:
    """Both models' tables, the second row with its deltas against the first; per-task deltas."""
    return "\n".join([f"# {new['model']} against {base['model']}", "", *model_tables([base, new]),
                      f"## Per task: {new['model']} (delta against {base['model']})", "",
                      *task_table(new, base), ""])


def plot_averages(summaries: Sequence[Summary], path: epath.Path) -> epath.Path:
    """Grouped bars: one group per setting, one bar per model, chance marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in CLASSIFICATION_SETTINGS if any(s in x["averages"] for x in summaries)]
    width = 0.8 / len(summaries)
    fig, ax = plt.subplots(figsize=(2 + 1.8 * len(settings), 4))
    x = np.arange(len(settings))
    for i, summary in enumerate(summaries):
        heights = [_average(summary, s) or 0.0 for s in settings]
        ax.bar(x + (i - (len(summaries) - 1) / 2) * width, heights, width, label=summary["model"])
    chance = [_average(summaries[0], s, "chance") or 0.0 for s in settings]
    ax.hlines(chance, x - 0.45, x + 0.45, colors="black", linestyles="dashed", label="random guessing")
    ax.set_xticks(x, [SETTING_TITLES[s].replace(" Relevant", "\nRelevant") for s in settings], fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with path.open("wb") as f:  # epath: also on a bucket
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def plot_tasks(summary: Summary, path: epath.Path) -> epath.Path:
    """Grouped bars: one group per task, one bar per setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["tasks"])
    settings = [s for s in CLASSIFICATION_SETTINGS + (GENERATION,)
                if any(s in by for by in summary["tasks"].values())]
    width = 0.8 / len(settings)
    fig, ax = plt.subplots(figsize=(2 + 0.9 * len(tasks), 4))
    x = np.arange(len(tasks))
    for i, setting in enumerate(settings):
        heights = [(summary["tasks"][t].get(setting, {}).get("accuracy") or 0.0) for t in tasks]
        ax.bar(x + (i - (len(settings) - 1) / 2) * width, heights, width, label=SETTING_TITLES[setting])
    ax.set_xticks(x, tasks, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(summary["model"])
    ax.legend(fontsize=6)
    fig.tight_layout()
    with path.open("wb") as f:  # epath: also on a bucket
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def write_reports(summary: Summary, out_dir: epath.PathLike) -> list[epath.Path]:
    """eval.json, eval.md and the two charts in `out_dir` (local or a bucket)."""
    out = epath.Path(out_dir)
    json_path, md_path, averages_png, tasks_png = (out / name for name in REPORT_FILES)
    write_json(json_path, summary)
    md_path.write_text(markdown(summary))
    return [json_path, md_path, plot_averages([summary], averages_png), plot_tasks(summary, tasks_png)]


def read_summary(path: epath.PathLike) -> Summary:
    """An eval.json, given as the file or the directory holding it (local or a bucket)."""
    path = epath.Path(path)
    file = path / REPORT_FILES[0] if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no {REPORT_FILES[0]} at {path}; run `symtune eval` first or pass its output dir")
    return json.loads(file.read_text())
