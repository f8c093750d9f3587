"""`symtune eval`: the in-context evaluation suite on a training checkpoint or an HF model.

What runs is `EvalConfig` (gin, see configs/runs/eval.gin); the mesh is `MeshConfig`. Reports
(eval.json, eval.md, PNG charts) and the per-unit results that make a rerun resume go to --out,
by default RUN_DIR/eval for a checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from etils import epath

import symtune.data.special_tokens  # noqa: F401  SpecialTokens, bound before the command runs
from symtune.errors import UserError
from symtune.eval.suite import EvalConfig
from symtune.train.mesh import MeshConfig

USES_GIN = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="RUN_DIR",
                        help="a `symtune train` run directory (newest step) or RUN_DIR/checkpoints/<step>")
    source.add_argument("--hf_model", metavar="DIR",
                        help="a Hugging Face model directory (config.json + safetensors)")
    parser.add_argument("--out", help="output directory (default RUN_DIR/eval; required with --hf_model)")


def run(args: argparse.Namespace) -> int:
    config = EvalConfig()
    evaluate(config, checkpoint=args.checkpoint, hf_model=args.hf_model, out=args.out)
    return 0


def evaluate(config: EvalConfig, *, checkpoint: str | None = None, hf_model: str | None = None,
             out: str | None = None, mesh_config: MeshConfig | None = None) -> epath.Path:
    """Loads the model on the mesh (default: gin's MeshConfig), runs (or resumes) the suite, writes
    the reports; returns the output dir."""
    import jax

    from symtune.data.vocab import get_vocabulary
    from symtune.eval.evaluate import run_suite
    from symtune.eval.report import model_tables, summarize, write_reports
    from symtune.eval.run_checkpoint import find_checkpoint, restore_decoder
    from symtune.eval.runner import DecoderModel, on_mesh
    from symtune.eval.tokenizer_files import vocabulary_of
    from symtune.models.hf import load_hf
    from symtune.train import distributed
    from symtune.train.mesh import describe_mesh, logical_rules, make_mesh
    from symtune.train.rundir import run_path

    distributed.initialize()
    mesh_config = mesh_config or MeshConfig()
    mesh = make_mesh(mesh_config)
    context = lambda: on_mesh(mesh, logical_rules(mesh_config.rules))  # noqa: E731
    overrides = {"dtype": config.dtype} if config.dtype else {}
    with context():
        if checkpoint is not None:
            step = find_checkpoint(checkpoint)
            model, run_spec = restore_decoder(step, mesh, **overrides)
            vocabulary, trained_prefix_lm = run_spec.vocabulary, run_spec.prefix_lm
            source = {"checkpoint": str(step.step_dir), "step": step.step}
            out_dir, name, ours = run_path(out) if out else step.run_dir / "eval", step.run_dir.name, True
        else:
            if out is None:
                raise UserError("--hf_model needs --out, the directory for the reports")
            model_dir = Path(hf_model).resolve()
            model = load_hf(model_dir, **overrides)
            vocabulary, trained_prefix_lm = vocabulary_of(model_dir), False
            source = {"hf_model": str(model_dir)}
            out_dir, name, ours = run_path(out), model_dir.name, False
    spec = config.vocabulary or vocabulary
    if spec is None:
        raise UserError(f"{hf_model} has no tokenizer files; set --gin.EvalConfig.vocabulary=\"'hf:DIR'\"")
    vocab = get_vocabulary(spec)
    if vocab.vocab_size > model.config.vocab_size:
        raise UserError(f"the vocabulary {spec} has {vocab.vocab_size} ids but the model only "
                        f"{model.config.vocab_size}; set EvalConfig.vocabulary to the model's tokenizer")
    config = dataclasses.replace(config, vocabulary=spec,
                                 score_eos=ours if config.score_eos is None else config.score_eos,
                                 prefix_lm=trained_prefix_lm if config.prefix_lm is None else config.prefix_lm)
    lm = DecoderModel(model, vocab, context, max_length=config.max_length,
                      max_decode_tokens=config.max_decode_tokens, batch_size=config.batch_size,
                      score_eos=config.score_eos, prefix_lm=config.prefix_lm)
    is_chief = jax.process_index() == 0
    if is_chief:
        print(f"eval: {name} ({source}) on {describe_mesh(mesh)}; outputs in {out_dir}")
    results = run_suite(lm, config, out_dir, source)
    summary = summarize(results, config, config.model_name or name, source)
    if is_chief:
        paths = write_reports(summary, out_dir)
        print("\n".join(model_tables([summary])))
        print("reports: " + ", ".join(str(p) for p in paths))
    return out_dir
