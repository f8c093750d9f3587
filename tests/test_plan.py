"""`symtune plan`: topologies, the memory estimate against XLA's, the search for a layout that fits, the CLI.

The estimate is compared with XLA:CPU's compiled memory analysis of the real train step on 8
simulated devices, as arguments + temporaries per device (outputs alias the donated arguments):
parameters + gradients + optimizer state + activations + working set + batch. Models compute in
float32 here: XLA:CPU keeps f32 copies of bf16 values, which TPUs and GPUs do not.
"""

import json
import subprocess
import sys
import time

import pytest

from symtune import cli
from symtune.errors import UserError
from symtune.models import presets
from symtune.plan import Layout, Workload, lower_step, parse_topology
from symtune.plan.memory import FEATURES, layout_from_config
from symtune.plan.search import candidate_layouts, change_cost, smallest_fitting_change
from symtune.train.lm_objective import lm_loss
from symtune.train.mesh import MeshConfig
from symtune.train.optim import OptimizerConfig

MESHES = {"dp": (8, 1, 1), "fsdp": (1, 8, 1), "fsdp+tp": (1, 4, 2)}


def layout(rules: str, remat: str = "none", microbatches: int = 1) -> Layout:
    data, fsdp, tensor = MESHES[rules]
    return Layout(1, data, fsdp, tensor, rules, remat, microbatches)


def workload(preset: str, batch: int, seq_len: int, optimizer: str = "adamw", **overrides) -> Workload:
    return Workload(presets.get_preset(preset).replace(**overrides), OptimizerConfig(name=optimizer),
                    batch_size=batch, seq_len=seq_len, steps=100, loss_fn=lm_loss)


# ---- topologies ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, chips, hosts, hbm_gib", [
    ("v5p-128", 64, 16, 95), ("v5p-8", 4, 1, 95), ("v4-64", 32, 8, 32), ("v5e-16", 16, 4, 16),
    ("v5e-8", 8, 1, 16), ("v6e-256", 256, 64, 32), ("8xH100", 8, 1, 80), ("64xA100-80GB", 64, 8, 80),
])
def test_topology_names_count_chips_and_hosts(name, chips, hosts, hbm_gib):
    topology = parse_topology(name)
    assert (topology.chips, topology.hosts, topology.accelerator.hbm_bytes) == (chips, hosts, hbm_gib * 2**30)


@pytest.mark.parametrize("name", ["v7-8", "v5p-6", "v5e-12", "12xH100", "8xV100", "v5p"])
def test_unknown_topology_is_a_one_line_error_naming_the_forms(name):
    with pytest.raises(UserError, match="v5p-N|v5e|multiple of 8|8-GPU hosts"):
        parse_topology(name)


def test_cli_reports_a_bad_topology_in_one_line(capsys):
    assert cli.main(["plan", "--gin_file=models/test-tiny", "--topology=v9-8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown topology 'v9-8'" in err[0] and "NxH100" in err[0]


def test_impossible_mesh_names_the_valid_sizes():
    with pytest.raises(UserError, match="1, 2, 4, 8, 16, 32"):
        layout_from_config(MeshConfig(data=-1, tensor=3), 32, "none", 1)
    with pytest.raises(UserError, match="batch 16 does not split.*1, 2, 4, 8, 16"):
        workload("test-tiny", 16, 64).check(Layout(1, 1, 32, 1, "fsdp", "none", 1))
    with pytest.raises(UserError, match="do not divide"):
        workload("test-tiny", 64, 64).check(Layout(1, 1, 1, 8, "tp", "none", 1))  # 2 kv heads


# ---- the estimate against XLA ------------------------------------------------------------------


@pytest.mark.parametrize("rules", MESHES)
@pytest.mark.parametrize("preset, batch, seq_len", [("test-tiny", 16, 256), ("pythia-70m", 16, 128)])
def test_estimate_agrees_with_xla_memory_analysis(preset, batch, seq_len, rules):
    work = workload(preset, batch, seq_len, dtype="float32")
    estimate = work.memory(layout(rules))
    xla = lower_step(work, layout(rules), compile=True)["memory_analysis"]
    measured = xla["arguments"] + xla["temporaries"]
    assert abs(estimate.total / measured - 1) < 0.15, (estimate, xla)
    # XLA's arguments are the train state and the batch (less decoder_causal_attention, which
    # jit drops as this loss does not read it).
    state = estimate.params + estimate.optimizer + estimate.batch
    assert state - estimate.batch / len(FEATURES) <= xla["arguments"] <= state + 4  # + the step counter


@pytest.mark.slow
@pytest.mark.parametrize("remat, microbatches, optimizer", [
    ("save_nothing", 1, "adamw"), ("save_projections", 1, "adamw"), ("none", 2, "adamw"), ("none", 1, "adafactor")])
@pytest.mark.parametrize("rules", MESHES)
def test_estimate_agrees_with_xla_under_remat_microbatches_and_adafactor(remat, microbatches, optimizer, rules):
    work = workload("pythia-70m", 16, 128, optimizer, dtype="float32")
    estimate = work.memory(layout(rules, remat, microbatches)).total
    xla = lower_step(work, layout(rules, remat, microbatches), compile=True)["memory_analysis"]
    assert abs(estimate / (xla["arguments"] + xla["temporaries"]) - 1) < 0.15


def test_fsdp_and_tensor_parallelism_divide_the_state():
    work = workload("pythia-70m", 16, 128)
    dp, fsdp, tp = (work.state_bytes(layout(r)) for r in ("dp", "fsdp", "fsdp+tp"))
    assert fsdp[0] * 8 == pytest.approx(dp[0], rel=0.01) and tp[0] == pytest.approx(fsdp[0], rel=0.01)
    adafactor = workload("pythia-70m", 16, 128, "adafactor").state_bytes(layout("dp"))[2]
    assert dp[2] == pytest.approx(2 * dp[0], rel=0.01) and adafactor < dp[2] / 3  # AdamW: two moments


def test_remat_and_microbatches_shrink_activations():
    work = workload("test-tiny", 16, 256)
    none, full, micro = (work.memory(layout("fsdp", r, m)) for r, m in (("none", 1), ("save_nothing", 1), ("none", 2)))
    assert full.activations < none.activations / 4
    assert micro.activations == pytest.approx(none.activations / 2, rel=0.05)


# ---- the search ----------------------------------------------------------------------------------


def test_smallest_change_that_fits_changes_one_knob_and_fits():
    work = workload("test-tiny", 16, 256)
    current = layout("dp")
    budget = work.memory(current).total * 0.65
    new, memory = smallest_fitting_change(work, current, budget)
    assert memory.total <= budget and change_cost(current, new)[0] == 1
    assert work.memory(new) == memory and new in set(candidate_layouts(current, 16))


def test_nothing_fits_a_budget_below_the_parameters():
    work = workload("test-tiny", 16, 256)
    assert smallest_fitting_change(work, layout("fsdp"), 1000) is None


# ---- the command ---------------------------------------------------------------------------------


LLAMA_3_8B = ["--gin_file=runs/symtune_finetune", "--gin_file=models/llama-3-8b", "--gin_file=meshes/fsdp",
              "--topology=v5p-64"]


def symtune_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "symtune.cli", "plan", *args],
                          capture_output=True, text=True, timeout=600)


def test_plan_for_llama_3_8b_on_v5p_64_prints_and_writes_a_plan(tmp_path):
    start = time.perf_counter()
    proc = symtune_plan(*LLAMA_3_8B, f"--out={tmp_path}")
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert elapsed < 120
    for text in ("v5p-64 = 32 TPU v5p chips", "activations", "tokens/s", "chip-hours", "verdict",
                 "simulated 32-device CPU mesh", "shardings valid"):
        assert text in proc.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["topology"]["chips"] == 32 and plan["layout"]["fsdp"] == 32
    assert plan["lowered"]["configured"]["devices"] == 32
    assert plan["fits"] == (plan["memory_bytes"]["total"] <= plan["budget_bytes"])


def test_plan_for_llama_2_70b_on_v5p_512_with_the_tensor_8_mesh_fits(tmp_path):
    start = time.perf_counter()
    proc = symtune_plan("--gin_file=runs/symtune_finetune", "--gin_file=models/llama-2-70b",
                        "--gin_file=meshes/fsdp_tp8", "--topology=v5p-512", f"--out={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.perf_counter() - start < 120
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert (plan["layout"]["fsdp"], plan["layout"]["tensor"], plan["fits"]) == (32, 8, True)
    assert plan["lowered"]["configured"]["devices"] == 256
