"""Runs the suite unit by unit; each finished unit is saved at once, so a rerun skips it.

OUT/results/<task>.<setting>.json holds a unit's counts per seed, its per-example records, and
the fingerprint (model source + scoring config) it was computed under; a saved unit is reused
only when the fingerprint matches. Every process scores (model calls are collective); the
first process writes.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import jax
from etils import epath
from tqdm.auto import tqdm

from symtune.data.evalsets import EvalExample
from symtune.eval.metrics import generate_and_match, rank_classify
from symtune.eval.runner import LanguageModel
from symtune.eval.suite import EvalConfig, Unit, unit_examples, units

RESULTS_DIR = "results"
UnitResult = dict[str, Any]


def render_unit(model: LanguageModel, unit: Unit, config: EvalConfig) -> dict[int, list[EvalExample]]:
    """A unit's examples for each of the config's seeds, fitted to the model's length budget."""
    return {seed: unit_examples(unit, seed, config, model.budget, model.count) for seed in config.seeds}


def score_unit(model: LanguageModel, unit: Unit, config: EvalConfig,
               examples: Mapping[int, Sequence[EvalExample]] | None = None) -> UnitResult:
    """Counts and per-example records of one unit over its seeds (examples rendered if not given)."""
    seeds = {}
    for seed, rendered in (examples or render_unit(model, unit, config)).items():
        records = (generate_and_match(model, rendered, config.data) if unit.generative
                   else rank_classify(model, rendered))
        seeds[str(seed)] = {"correct": sum(r["correct"] for r in records), "total": len(records),
                            "records": records}
    correct = sum(s["correct"] for s in seeds.values())
    total = sum(s["total"] for s in seeds.values())
    return {"task": unit.task, "setting": unit.setting, "correct": correct, "total": total,
            "accuracy": 100.0 * correct / total if total else None, "seeds": seeds}


def write_json(path: epath.PathLike, value: Any) -> None:
    """Writes JSON atomically on local disks (a crash leaves the old file or none, never half of one)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    tmp.replace(path)


def _saved(path: epath.Path, fingerprint: Mapping[str, Any]) -> UnitResult | None:
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("fingerprint") == fingerprint else None


def run_suite(model: LanguageModel, config: EvalConfig, out_dir: epath.PathLike,
              source: Mapping[str, Any]) -> dict[str, UnitResult]:
    """Every unit's result by unit name, scoring only those not saved under this fingerprint."""
    results_dir = epath.Path(out_dir) / RESULTS_DIR
    fingerprint = json.loads(json.dumps({"source": source, "config": config.scoring_fields()}))
    results = {u.name: _saved(results_dir / f"{u.name}.json", fingerprint) for u in units(config)}
    todo = [u for u in units(config) if results[u.name] is None]
    is_chief = jax.process_index() == 0
    if is_chief and len(todo) < len(results):
        print(f"eval: reusing {len(results) - len(todo)} finished units from {results_dir}")
    for unit in tqdm(todo, desc="eval", unit="unit", disable=not is_chief, dynamic_ncols=True):
        result = {**score_unit(model, unit, config), "fingerprint": fingerprint}
        if is_chief:
            write_json(results_dir / f"{unit.name}.json", result)
        results[unit.name] = result
    return results
