"""`symtune eval` end to end on a test-tiny training run directory, offline, on 8 CPU devices."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import pytest
from flax import nnx

from symtune import cli
from symtune.data.sources import DataConfig
from symtune.data.vocab import get_vocabulary
from symtune.eval.eval_command import evaluate
from symtune.eval.hook import PeriodicEvalConfig, periodic_eval_hook
from symtune.eval.report import REPORT_FILES, read_summary
from symtune.eval.run_checkpoint import find_checkpoint, restore_decoder
from symtune.eval.runner import on_mesh
from symtune.eval.suite import EvalConfig
from symtune.models.decoder import Decoder
from symtune.models.presets import get_preset
from symtune.train.checkpoint import Checkpointer
from symtune.train.mesh import MeshConfig, logical_rules, make_mesh
from symtune.train.rundir import ModelSpec, write_model_spec

STEP = 7


def make_run_dir(run_dir: Path, vocabulary: str = "default", seed: int = 0, prefix_lm: bool = False) -> Path:
    """A training run directory as `symtune train` leaves it: model.json and one checkpoint step."""
    config = get_preset("test-tiny").replace(vocab_size=get_vocabulary(vocabulary).vocab_size)
    _, params, _ = nnx.split(Decoder(config, rngs=nnx.Rngs(seed)), nnx.Param, ...)
    checkpointer = Checkpointer(run_dir)
    checkpointer.save(STEP, {"step": jnp.int32(STEP), "params": nnx.to_pure_dict(params)}, {"start_step": STEP},
                      force=True)
    checkpointer.close()
    write_model_spec(run_dir, ModelSpec(config, vocabulary, prefix_lm))
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run"))


def quick_config(data_dir, **fields):
    fields = {"tasks": ("SUBJ", "list_functions", "simp_turing_concept"), "settings": ("symbols", "flipped"),
              "max_examples": 2, "list_function_subtasks": 1, "max_length": 512, "max_decode_tokens": 8,
              **fields}
    return EvalConfig(data=DataConfig(data_dir=str(data_dir)), **fields)


def test_eval_of_a_run_dir_writes_all_reports_and_resumes(run_dir, data_dir, monkeypatch):
    out = evaluate(quick_config(data_dir), checkpoint=str(run_dir))
    assert out == run_dir / "eval"
    for name in REPORT_FILES:
        assert Path(out, name).stat().st_size > 0
    summary = read_summary(out)
    assert summary["source"]["step"] == STEP and summary["seeds"] == [0]
    assert summary["config"]["score_eos"] is True and summary["config"]["vocabulary"] == "default"
    assert summary["config"]["prefix_lm"] is False
    assert set(summary["tasks"]) == {"SUBJ", "list_functions", "simp_turing_concept"}
    assert {s: e["total"] for s, e in summary["tasks"]["SUBJ"].items()} == {"symbols": 2, "flipped": 2}
    saved = json.loads((out / "results" / "list_functions.exact_match.json").read_text())
    records = saved["seeds"]["0"]["records"]
    assert len(records) == 2 and all(isinstance(r["output"], str) for r in records)

    # A second run reuses every saved unit: the model is never called.
    monkeypatch.setattr("symtune.eval.runner.score_continuations", None)
    monkeypatch.setattr("symtune.eval.runner.greedy_decode", None)
    evaluate(quick_config(data_dir), checkpoint=str(run_dir / "checkpoints" / str(STEP)))
    assert read_summary(out)["tasks"] == summary["tasks"]


def test_a_prefix_lm_run_is_scored_with_prefix_attention_unless_overridden(data_dir, tmp_path, monkeypatch):
    from symtune.eval import runner

    calls = []
    score = runner.score_continuations
    monkeypatch.setattr(runner, "score_continuations",
                        lambda *a, **kw: calls.append(kw["prefix_lm"]) or score(*a, **kw))
    run = make_run_dir(tmp_path / "run", prefix_lm=True)
    prefix = read_summary(evaluate(quick_config(data_dir, tasks=("SUBJ",), settings=("symbols",)),
                                   checkpoint=str(run), out=str(tmp_path / "a")))
    assert prefix["config"]["prefix_lm"] is True and calls and all(calls)
    calls.clear()
    causal = read_summary(evaluate(quick_config(data_dir, tasks=("SUBJ",), settings=("symbols",), prefix_lm=False),
                                   checkpoint=str(run), out=str(tmp_path / "b")))
    assert causal["config"]["prefix_lm"] is False and calls and not any(calls)


def test_sharded_eval_scores_like_replicated_eval(run_dir, data_dir, tmp_path):
    config = quick_config(data_dir, tasks=("TOS",), settings=("natural",), max_examples=4)
    outs = [evaluate(config, checkpoint=str(run_dir), out=str(tmp_path / mesh.rules), mesh_config=mesh)
            for mesh in (MeshConfig(rules="dp"), MeshConfig(data=2, fsdp=4, rules="fsdp"))]
    records = [json.loads((out / "results" / "TOS.natural.json").read_text())["seeds"]["0"]["records"]
               for out in outs]
    assert records[0] == records[1]


@pytest.mark.multiprocess
def test_two_local_processes_evaluate_like_one_and_only_the_first_writes(run_dir, data_dir, tmp_path, repo_root):
    """`symtune eval` under launch/local.sh (2 processes x 4 devices) joins one job over 8 devices."""
    config = quick_config(data_dir, tasks=("SUBJ", "list_functions"), settings=("symbols",))
    single = evaluate(config, checkpoint=str(run_dir), out=str(tmp_path / "single"))
    flags = [f"--gin.EvalConfig.{k}={v!r}" for k, v in [
        ("tasks", list(config.tasks)), ("settings", list(config.settings)), ("max_examples", 2),
        ("list_function_subtasks", 1), ("max_length", 512), ("max_decode_tokens", 8)]]
    env = {**os.environ, "SYMTUNE_DATA_DIR": str(data_dir), "PYTHON": sys.executable}
    launcher = [str(repo_root / "launch" / "local.sh"), "--processes=2", "--devices=4", "--"]
    done = subprocess.run(launcher + [sys.executable, "-m", "symtune.cli", "eval", f"--checkpoint={run_dir}",
                                      f"--out={tmp_path / 'multi'}", *flags],
                          env=env, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "over 8 cpu devices" in done.stdout
    assert "[0] reports:" in done.stdout and "[1] reports:" not in done.stdout
    for unit in ("SUBJ.symbols", "list_functions.exact_match"):
        one, two = (json.loads((out / "results" / f"{unit}.json").read_text())["seeds"]["0"]["records"]
                    for out in (single, tmp_path / "multi"))
        assert two == one, unit


def test_periodic_hook_returns_accuracies_every_n_steps(run_dir, data_dir):
    mesh = make_mesh(MeshConfig())
    context = lambda: on_mesh(mesh, logical_rules("dp"))  # noqa: E731
    with context():
        model, spec = restore_decoder(find_checkpoint(run_dir), mesh)
    vocabulary = spec.vocabulary
    trainer = SimpleNamespace(model=lambda state: state, context=context)  # the two things a hook uses
    hook = periodic_eval_hook(get_vocabulary(vocabulary), max_length=512, config=PeriodicEvalConfig(
        every_steps=5, tasks=("TC", "OR"), settings=("natural", "symbols"), max_examples=2))
    assert hook(3, model, trainer) is None
    scalars = hook(10, model, trainer)
    assert set(scalars) == {"eval/natural", "eval/symbols", "eval/TC/natural", "eval/TC/symbols",
                            "eval/OR/natural", "eval/OR/symbols"}
    per_task = (scalars["eval/TC/natural"], scalars["eval/OR/natural"])
    assert scalars["eval/natural"] == pytest.approx(sum(per_task) / 2)
    assert hook(15, model, trainer) == scalars  # same prompts, same model
    assert periodic_eval_hook(get_vocabulary(vocabulary), max_length=512) is None  # off by default


@pytest.mark.parametrize("argv, expected", [
    (["eval", "--checkpoint=/no/such/run"], "checkpoint /no/such/run does not exist"),
    (["eval", "--checkpoint={tmp}"], "is not a training run directory"),
    (["eval", "--hf_model={tmp}", "--out={tmp}/o"], "has no config.json"),
    (["eval", "--hf_model={tmp}"], "--hf_model needs --out"),
    (["eval", "--checkpoint={tmp}", "--gin.EvalConfig.tasks=['XNLI']"], "unknown evaluation task 'XNLI'"),
    (["eval", "--checkpoint={tmp}", "--gin.EvalConfig.settings=['sideways']"], "unknown evaluation setting"),
    (["export", "--checkpoint=/no/such/run", "--out={tmp}/x"], "checkpoint /no/such/run does not exist"),
])
def test_bad_input_is_a_one_line_error(argv, expected, tmp_path, capsys):
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # gin appends "In call to configurable ..." to errors raised in a configurable's constructor.
    assert expected in err.splitlines()[0], err


@pytest.mark.slow
def test_full_suite_on_test_tiny_via_the_cli(run_dir, data_dir, tmp_path):
    """Every task and setting, 3 examples each: what `symtune eval --gin_file=runs/eval` runs."""
    out = tmp_path / "full"
    argv = ["eval", "--gin_file=runs/eval", f"--checkpoint={run_dir}", f"--out={out}",
            "--gin.EvalConfig.max_examples=3", "--gin.EvalConfig.list_function_subtasks=2",
            f"--gin.DataConfig.data_dir='{data_dir}'"]
    assert cli.main(argv) == 0
    summary = read_summary(out)
    assert len(summary["averages"]["symbols"]["tasks"]) == 11
    assert len(summary["averages"]["flipped"]["tasks"]) == 6
    assert round(summary["averages"]["symbols"]["chance"], 1) == 42.4
    assert all(e["total"] == 3 for by in summary["tasks"].values() for e in by.values())
