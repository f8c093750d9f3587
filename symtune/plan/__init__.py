"""`symtune plan`: will a run fit a TPU slice or GPU cluster, how fast will it go, what will it cost.

    symtune plan --gin_file=runs/symtune_finetune --gin_file=models/llama-3-8b \
        --gin_file=meshes/fsdp --topology=v5p-64 [--mfu=0.4] [--out=DIR] [--compile]

From the run's gin config (model, MeshConfig, TrainerConfig, OptimizerConfig, TrainData) and a
topology (symtune.plan.topology) it prints, per chip: parameters, gradients, optimizer state,
activations, the transient working set and the batch (symtune.plan.memory), against the chip's
HBM; the step's model FLOPs (symtune.models.presets.flops_per_token), step time and tokens/s at a
stated MFU; wall time and chip-hours of this run and of the paper's recipe; and, when the run does
not fit, the smallest change of mesh, remat or microbatches that does (symtune.plan.search).

It then builds the real Trainer on a simulated CPU mesh of the same shape (the command simulates
as many CPU devices as the topology has chips before JAX starts) and lowers the train step with
abstract arrays: the shardings are proven valid without allocating anything. `--compile` instead
compiles the step for the target itself, without its hardware (symtune.plan.targets: libtpu for
TPU slices, the CUDA plugin for GPUs), and prints that compiler's memory per chip beside the
estimate, for the configured layout, the suggested one (compiling the next candidates when the
compiler puts it over budget) and the smallest larger slice. Without the target's compiler it
falls back to XLA:CPU on the simulated mesh, says so, and labels the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

# Imported here so TrainData, model_config, MeshConfig, ... exist for gin overrides.
import symtune.train.run  # noqa: F401
from symtune.errors import UserError
from symtune.models.config import DecoderConfig
from symtune.plan.memory import FEATURES, Layout, Memory, Workload, layout_from_config
from symtune.plan.search import describe_changes, fitting_changes, smallest_fitting_change, smallest_fitting_slice
from symtune.plan.topology import ACCELERATORS, GiB, TOPOLOGY_FORMS, Topology, parse_topology

USES_GIN = True
HBM_BUDGET = 0.9  # of HBM a step may use; XLA's runtime, fragmentation and the like take the rest
DEFAULT_MFU = 0.4
PAPER_STEPS, PAPER_BATCH, PAPER_TOKENS = 4000, 32, 2048  # Wei et al. 2023, section 3

__all__ = ["Layout", "Topology", "Workload", "lower_step", "make_plan", "parse_topology"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topology", required=True, help=f"the slice or cluster: {TOPOLOGY_FORMS}")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help=f"model FLOPs utilisation assumed for step time (default {DEFAULT_MFU})")
    parser.add_argument("--out", help="a directory to write plan.json into")
    parser.add_argument("--compile", action="store_true",
                        help="also compile the step with the target's own compiler (TPU or GPU, "
                             "deviceless; XLA:CPU when it is not installed) and print its memory per chip "
                             "beside the estimate (about a minute per layout for 8B models)")


def run(args: argparse.Namespace) -> int:
    from symtune.hostenv import simulate_cpu_devices

    topology = parse_topology(args.topology)
    if not 0 < args.mfu <= 1:
        raise UserError(f"--mfu={args.mfu}: give a fraction in (0, 1], e.g. 0.4")
    simulate_cpu_devices(topology.chips)  # before anything starts JAX's backends
    plan = make_plan(topology, mfu=args.mfu, compile=args.compile)
    print(format_plan(plan))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
        print(f"wrote {out / 'plan.json'}")
    return 0


def lower_step(workload: Workload, layout: Layout, *, compile: bool = False,
               devices: list | None = None) -> dict[str, Any]:
    """Builds the real Trainer on a mesh of the layout's shape and lowers its step with abstract
    arrays; allocates nothing. The mesh is over `devices` (a target's, for deviceless compilation;
    default: this process's simulated CPU devices). With `compile`, compiles it too and adds the
    compiler's memory per chip (`compiler_bytes_per_chip`; for a TPU program over HBM, the figure
    from the compiler's error, with `out_of_memory`)."""
    import jax
    import jax.numpy as jnp

    from symtune.models.decoder import Decoder
    from symtune.plan.targets import out_of_memory_temporaries
    from symtune.train.mesh import MeshConfig, logical_rules, make_mesh
    from symtune.train.trainer import Trainer, TrainerConfig

    if devices is None:
        devices = jax.devices()
        if len(devices) < layout.chips:
            raise UserError(f"lowering on {layout.chips} devices, but JAX has {len(devices)}; run `symtune "
                            "plan` in a fresh process, which simulates the devices before JAX starts")
    start = time.perf_counter()
    mesh = make_mesh(MeshConfig(**layout.mesh, rules=layout.rules), devices[:layout.chips])
    model = workload.model.replace(remat_policy=layout.remat)
    if mesh.devices.flat[0].platform == "cpu":
        model = model.replace(attention="xla")  # simulated CPU devices stand in for the target
    trainer = Trainer(
        lambda rngs: Decoder(model, rngs=rngs), workload.loss_fn, mesh=mesh, rules=logical_rules(layout.rules),
        config=TrainerConfig(steps=workload.steps, microbatches=layout.microbatches), optimizer=workload.optimizer)
    batch = {k: jax.ShapeDtypeStruct((workload.batch_size, workload.seq_len), jnp.int32) for k in FEATURES}
    platform = mesh.devices.flat[0].platform
    result: dict[str, Any] = {"devices": layout.chips, "platform": "cuda" if platform == "gpu" else platform}
    if compile:
        try:
            trainer.compile_step(batch)
        except Exception as e:  # XLA's runtime error type moves between jax versions
            temporaries = out_of_memory_temporaries(e)
            if temporaries is None:
                raise
            arguments = _bytes_per_device(trainer.abstract_state) + _bytes_per_device(
                {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s) for (k, v), s in
                 zip(batch.items(), trainer.batch_shardings(batch).values())})
            result.update(compiler_bytes_per_chip=arguments + temporaries, out_of_memory=True)
        else:
            m = result["memory_analysis"] = trainer.memory_per_device()
            result["compiler_bytes_per_chip"] = m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"]
    else:
        trainer.lower_step(batch)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def configured_workload(topology: Topology) -> tuple[Workload, Layout]:
    """The gin-configured run's workload (estimating for the topology's compiler) and its layout
    on the topology; a UserError when the layout cannot split the batch or a parameter."""
    from symtune.data.pipeline import TrainData
    from symtune.train.lm_objective import lm_loss
    from symtune.train.mesh import MeshConfig
    from symtune.train.optim import OptimizerConfig
    from symtune.train.run import RunConfig, check_positions
    from symtune.train.trainer import TrainerConfig

    run, data, trainer = RunConfig(), TrainData(), TrainerConfig()
    model = _model_config(run.warm_start)
    check_positions(data.seq_len, model)
    loss_fn = functools.partial(lm_loss, bidirectional_prefix=run.bidirectional_prefix)
    workload = Workload(model, OptimizerConfig(), batch_size=data.batch_size, seq_len=data.seq_len,
                        steps=trainer.steps, loss_fn=loss_fn, platform=topology.platform)
    layout = layout_from_config(MeshConfig(), topology.chips, model.remat_policy, trainer.microbatches)
    workload.check(layout)
    return workload, layout


def make_plan(topology: Topology, *, mfu: float = DEFAULT_MFU, compile: bool = False,
              lower: bool = True) -> dict[str, Any]:
    """The plan for the gin-configured run on `topology`, as a JSON-ready dict."""
    from symtune.data.pipeline import TrainData
    from symtune.models.presets import flops_per_token, param_count
    from symtune.train.trainer import TrainerConfig

    data, trainer = TrainData(), TrainerConfig()
    workload, layout = configured_workload(topology)
    model = workload.model

    budget = topology.accelerator.hbm_bytes * HBM_BUDGET
    memory = workload.memory(layout)
    suggestion = None if memory.total <= budget else smallest_fitting_change(workload, layout, budget)
    cluster_flops = topology.chips * topology.accelerator.peak_flops * mfu
    step_seconds = workload.step_flops() / cluster_flops
    paper_tokens = PAPER_STEPS * PAPER_BATCH * PAPER_TOKENS
    paper_hours = paper_tokens * flops_per_token(model, PAPER_TOKENS) / cluster_flops / 3600
    run_hours = trainer.steps * step_seconds / 3600
    plan: dict[str, Any] = {
        "topology": {"name": topology.name, "accelerator": topology.accelerator.name, "chips": topology.chips,
                     "hosts": topology.hosts, "hbm_bytes": topology.accelerator.hbm_bytes,
                     "peak_flops_per_chip": topology.accelerator.peak_flops},
        "model": {"preset": _gin_value("model_config.preset"), "parameters": param_count(model),
                  "dtype": model.dtype, "param_dtype": model.param_dtype, "attention": workload.attention},
        "run": {"batch_size": data.batch_size, "seq_len": data.seq_len, "steps": trainer.steps,
                "optimizer": workload.optimizer.name},
        "layout": dataclasses.asdict(layout),
        "memory_bytes": memory.as_dict(),
        "budget_bytes": int(budget),
        "fits": memory.total <= budget,
        "compute": {
            "mfu": mfu, "flops_per_token": flops_per_token(model, data.seq_len), "step_flops": workload.step_flops(),
            "step_seconds": step_seconds, "tokens_per_second": data.batch_size * data.seq_len / step_seconds,
            "run_hours": run_hours, "run_chip_hours": run_hours * topology.chips,
            "paper_tokens": paper_tokens, "paper_hours": paper_hours, "paper_chip_hours": paper_hours * topology.chips,
        },
        "suggestion": None,
    }
    if suggestion:
        plan["suggestion"] = _suggestion(layout, *suggestion)
    if not plan["fits"] and not suggestion:
        larger = smallest_fitting_slice(workload, layout, topology, budget)
        if larger:
            bigger, big_layout, big_memory = larger
            plan["larger_slice"] = {"topology": bigger.name, "chips": bigger.chips,
                                    "layout": dataclasses.asdict(big_layout), "memory_bytes": big_memory.as_dict()}
    if compile:
        plan["compiled"] = compile_layouts(workload, topology, layout, plan, budget)
    elif lower:
        plan["lowered"] = {"configured": lower_step(workload, layout)}
        if suggestion:
            plan["lowered"]["suggested"] = lower_step(workload, suggestion[0])
    return plan


MAX_CONFIRMING_COMPILES = 3  # suggested layouts compiled before the plan gives up confirming one


def compile_layouts(workload: Workload, topology: Topology, layout: Layout, plan: dict[str, Any],
                    budget: float) -> dict[str, Any]:
    """Compiles the configured layout, and the suggested one, with the target's own compiler (XLA:CPU
    on simulated devices when it is not installed: labelled, and said once); a suggestion the
    compiler puts over budget gives way to the next layout that the estimate fits, up to
    MAX_CONFIRMING_COMPILES compiles."""
    from symtune.plan.targets import INSTALL_HINT, compiler_installed, target_devices

    platform = topology.platform
    devices = target_devices(topology) if compiler_installed(platform) else None
    if devices is None:
        print(f"note: the {platform.upper()} compiler is not installed ({INSTALL_HINT}); compiling with XLA:CPU "
              "on simulated devices instead, whose memory model differs", flush=True)

    def compiled(which_layout: Layout, memory: Memory, devices_=devices) -> dict[str, Any]:
        low = lower_step(workload, which_layout, compile=True, devices=devices_)
        return {**low, "estimate_bytes_per_chip": memory.total,
                "fits": low["compiler_bytes_per_chip"] <= budget and not low.get("out_of_memory")}

    result = {"configured": compiled(layout, workload.memory(layout))}
    if plan["suggestion"]:
        tried = 0
        for candidate, memory in fitting_changes(workload, layout, budget):
            result["suggested"] = compiled(candidate, memory)
            tried += 1
            if result["suggested"]["fits"] or tried == MAX_CONFIRMING_COMPILES:
                break
            print(f"note: the compiler puts {candidate.describe()} over budget "
                  f"({result['suggested']['compiler_bytes_per_chip'] / GiB:.1f} GiB); trying the next layout",
                  flush=True)
        plan["suggestion"] = _suggestion(layout, candidate, memory)
    if plan.get("larger_slice") and devices is not None:  # XLA:CPU would need more simulated devices
        big_layout = Layout(**plan["larger_slice"]["layout"])
        big_devices = target_devices(parse_topology(plan["larger_slice"]["topology"]))
        result["larger_slice"] = compiled(big_layout, workload.memory(big_layout), big_devices)
    return result


def _bytes_per_device(tree) -> int:
    """Bytes one device holds of a tree of sharded abstract arrays."""
    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _suggestion(current: Layout, candidate: Layout, memory: Memory) -> dict[str, Any]:
    overrides = dict(_gin_value("model_config.overrides") or {})
    return {"layout": dataclasses.asdict(candidate), "memory_bytes": memory.as_dict(),
            "changes": describe_changes(current, candidate, overrides)}


def _model_config(warm_start: str | None) -> DecoderConfig:
    """The model `symtune train` builds, with the preset's vocabulary padded as training pads it."""
    from symtune.models import presets
    from symtune.train.run import padded_vocab_size, resolve_model_config

    config = resolve_model_config(1, warm_start)  # the same choice and checks as training
    if warm_start:
        return config
    return config.replace(vocab_size=padded_vocab_size(presets.model_config().vocab_size))


def _gin_value(name: str) -> Any:
    import gin

    try:
        return gin.query_parameter(name)
    except ValueError:
        return None


# ---- printing --------------------------------------------------------------------------------


def _bytes(n: float) -> str:
    return f"{n / GiB:8.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:8.2f} MiB"


def _duration(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if hours < 2 else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as readable text."""
    topo, run, mem, comp = plan["topology"], plan["run"], plan["memory_bytes"], plan["compute"]
    layout = Layout(**plan["layout"])
    accelerator = next(a for a in ACCELERATORS.values() if a.name == topo["accelerator"])
    rows = run["batch_size"] // layout.logical_ways("act_batch")
    split = [f"{name} {n}" for name, n in (("fsdp", layout.logical_ways("embed")),
                                          ("tensor", layout.logical_ways("mlp"))) if n > 1]
    optimizer = {"adamw": "AdamW: two fp32 moments", "adafactor": "Adafactor: factored second moments"}
    notes = {
        "params": f"{plan['model']['param_dtype']}, " + (" x ".join(split) + "-way sharded" if split else "replicated"),
        "grads": "fp32, sharded like the parameters" + (" (x2 with microbatches)" if layout.microbatches > 1 else ""),
        "optimizer": optimizer.get(run["optimizer"], run["optimizer"]),
        "activations": f"saved for the backward pass: {rows // layout.microbatches} row(s) x "
                       f"{run['seq_len']:,} tokens, remat {layout.remat}",
        "gathered": "compute-dtype layer weights XLA:TPU gathers once for all microbatches",
        "working": f"transient peak: {mem['peak']}",
        "batch": f"{rows} row(s) of int32 features",
    }
    budget = plan["budget_bytes"]
    lines = [
        f"topology     {Topology(topo['name'], accelerator, topo['chips']).describe()}",
        f"model        {plan['model']['preset'] or 'custom'}: {_count(plan['model']['parameters'])} parameters, "
        f"{plan['model']['dtype']} compute, {plan['model']['attention']} attention",
        f"run          batch {run['batch_size']} x {run['seq_len']:,} tokens, {run['steps']:,} steps, "
        f"{run['optimizer']}",
        f"layout       {layout.describe()}",
        "",
        "memory per chip (estimate)",
        *[f"  {name:<12}{_bytes(mem[name])}   {note}" for name, note in notes.items() if mem[name] or name != "gathered"],
        f"  {'total':<12}{_bytes(mem['total'])}   of {budget / GiB:.1f} GiB usable ({HBM_BUDGET:.0%} of "
        f"{topo['hbm_bytes'] / GiB:.0f} GiB HBM)",
        "",
        f"compute at {comp['mfu']:.0%} MFU",
        f"  step        {comp['step_flops']:.3g} FLOPs ({comp['flops_per_token']:.3g} per token): "
        f"{comp['step_seconds']:.3g} s, {comp['tokens_per_second']:,.0f} tokens/s "
        f"({comp['tokens_per_second'] / topo['chips']:,.0f} per chip)",
        f"  this run    {run['steps']:,} steps x {run['batch_size']} x {run['seq_len']:,} tokens = "
        f"{_count(run['steps'] * run['batch_size'] * run['seq_len'])} tokens: {_duration(comp['run_hours'])}, "
        f"{comp['run_chip_hours']:,.1f} chip-hours",
        f"  paper       {PAPER_STEPS:,} steps x {PAPER_BATCH} x {PAPER_TOKENS:,} tokens = "
        f"{_count(comp['paper_tokens'])} tokens: {_duration(comp['paper_hours'])}, "
        f"{comp['paper_chip_hours']:,.1f} chip-hours",
    ]
    if layout.remat != "none":
        lines.append(f"  remat {layout.remat} recomputes activations: the chips do more work than these model "
                     "FLOPs, so expect a lower MFU")
    total = f"{mem['total'] / GiB:.1f} GiB"
    if plan["fits"]:
        lines += ["", f"verdict      fits: {total} of {budget / GiB:.1f} GiB per chip"]
    elif plan["suggestion"]:
        s = plan["suggestion"]
        lines += ["", f"verdict      does not fit: {total} > {budget / GiB:.1f} GiB per chip. The smallest change "
                      f"that fits ({s['memory_bytes']['total'] / GiB:.1f} GiB):",
                  *[f"             {change}" for change in s["changes"]]]
    else:
        lines += ["", f"verdict      does not fit: {total} > {budget / GiB:.1f} GiB per chip, and no mesh, remat "
                      f"or microbatch change on {topo['chips']} chips fits"]
        big = plan.get("larger_slice")
        if big:
            lines.append(f"             the smallest {accelerator.name} slice that fits: {big['topology']} "
                         f"({big['chips']} chips), {Layout(**big['layout']).describe()}: "
                         f"{big['memory_bytes']['total'] / GiB:.1f} GiB per chip")
        else:
            lines.append("             on no larger slice either: use larger chips")
    for which, low in plan.get("lowered", {}).items():
        lines.append(f"lowered      the train step ({which} layout) on a simulated {low['devices']}-device "
                     f"{low['platform'].upper()} mesh with abstract arrays: shardings valid ({low['seconds']} s)")
    for which, c in plan.get("compiled", {}).items():
        where = f"{c['devices']} simulated CPU devices (XLA:CPU)" if c["platform"] == "cpu" else \
            f"{c['devices']} {c['platform'].upper()} devices"
        error = c["compiler_bytes_per_chip"] / c["estimate_bytes_per_chip"] - 1
        over = ", over HBM" if c.get("out_of_memory") else ""
        lines.append(f"compiled     the train step ({which.replace('_', ' ')} layout) for {where} in {c['seconds']} s: "
                     f"{c['compiler_bytes_per_chip'] / GiB:.2f} GiB per chip{over} (estimate "
                     f"{c['estimate_bytes_per_chip'] / GiB:.2f} GiB, compiler {error:+.1%}): "
                     + ("fits" if c["fits"] else f"does not fit in {budget / GiB:.1f} GiB"))
    return "\n".join(lines)
