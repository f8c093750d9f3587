"""`symtune export`: a training checkpoint as a Hugging Face model directory and a bf16 params export.

OUT/hf      config.json, model.safetensors and tokenizer files (`transformers` loads it;
            `symtune eval --hf_model=OUT/hf` evaluates it)
OUT/params  params-only orbax checkpoint in bfloat16 (a warm start: RunConfig.warm_start)
OUT/model.json  the model config and vocabulary spec the params belong to
"""

from __future__ import annotations

import argparse
from pathlib import Path

import symtune.train.mesh  # noqa: F401  MeshConfig, for overrides without a gin file
from symtune.errors import UserError

USES_GIN = True
HF_DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR",
                        help="a `symtune train` run directory (newest step) or RUN_DIR/checkpoints/<step>")
    parser.add_argument("--out", required=True, help="the export directory to create")
    parser.add_argument("--hf_dtype", default="float32", choices=HF_DTYPES, help="dtype of the safetensors")


def export(checkpoint: str, out: str | Path, hf_dtype: str = "float32") -> Path:
    """Writes OUT/hf, OUT/params and OUT/model.json from one checkpoint step; returns OUT."""
    import jax
    from flax import nnx

    from symtune.eval.run_checkpoint import find_checkpoint, restore_decoder
    from symtune.eval.runner import on_mesh
    from symtune.eval.tokenizer_files import write_tokenizer_files
    from symtune.models.hf import export_hf
    from symtune.train.checkpoint import export_params
    from symtune.train.mesh import MeshConfig, logical_rules, make_mesh
    from symtune.train.rundir import write_model_spec

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; choose a new export directory")
    if jax.process_count() > 1:
        raise UserError("`symtune export` runs in a single process; start it on one host")
    step = find_checkpoint(checkpoint)
    mesh_config = MeshConfig()
    mesh = make_mesh(mesh_config)
    with on_mesh(mesh, logical_rules(mesh_config.rules)):
        model, spec = restore_decoder(step, mesh)
    hf_dir = export_hf(spec.config, model, out / "hf", dtype=hf_dtype)
    tokenizer = write_tokenizer_files(spec.vocabulary, hf_dir)
    export_params(nnx.state(model, nnx.Param), out / "params")
    write_model_spec(out, spec)
    print(f"exported step {step.step} of {step.run_dir}:\n  {hf_dir} (safetensors {hf_dtype}, tokenizer: "
          f"{', '.join(tokenizer) or 'none'})\n  {out / 'params'} (orbax, bfloat16)\n  {out / 'model.json'}")
    return out


def run(args: argparse.Namespace) -> int:
    export(args.checkpoint, args.out, args.hf_dtype)
    return 0
