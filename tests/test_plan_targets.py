"""Compile truth: the train step compiled for TPU slices and GPU nodes on this CPU (deviceless),
the compilers' memory per chip against the planner's estimate, and `symtune plan --compile`.

The compilers come with the `aot` extra (libtpu, the CUDA plugin), which `make test` installs.
"""

import json
import subprocess
import sys

import pytest

from symtune import cli
from symtune.config import parse_gin
from symtune.errors import UserError
from symtune.models import presets
from symtune.plan import Layout, Workload, lower_step, make_plan, parse_topology
from symtune.plan.targets import compiler_installed, target_devices
from symtune.train.lm_objective import lm_loss
from symtune.train.optim import OptimizerConfig

needs_tpu_compiler = pytest.mark.skipif(not compiler_installed("tpu"),
                                        reason="needs the TPU compiler: pip install -e '.[aot]'")
needs_gpu_compiler = pytest.mark.skipif(not compiler_installed("cuda"),
                                        reason="needs the GPU compiler: pip install -e '.[aot]'")
GiB = 2**30


@needs_tpu_compiler
@pytest.mark.parametrize("name, chips, kind, hosts", [
    ("v4-8", 4, "TPU v4", 1), ("v5p-64", 32, "TPU v5", 8), ("v5e-16", 16, "TPU v5 lite", 4),
    ("v6e-8", 8, "TPU v6 lite", 1)])
def test_tpu_slices_give_their_chips_to_the_tpu_compiler(name, chips, kind, hosts):
    devices = target_devices(parse_topology(name))
    assert len(devices) == chips and {d.platform for d in devices} == {"tpu"}
    assert devices[0].device_kind == kind and len({d.process_index for d in devices}) == hosts


@needs_gpu_compiler
@pytest.mark.parametrize("name, chips, kind, hosts", [
    ("2xH100", 2, "NVIDIA H100 80GB HBM3", 1), ("16xH100", 16, "NVIDIA H100 80GB HBM3", 2),
    ("8xA100-80GB", 8, "NVIDIA A100-SXM4-80GB", 1)])
def test_gpu_clusters_give_their_gpus_to_the_cuda_compiler(name, chips, kind, hosts):
    devices = target_devices(parse_topology(name))
    assert len(devices) == chips and devices[0].device_kind == kind
    assert len({d.process_index for d in devices}) == hosts


@needs_tpu_compiler
def test_a_slice_size_no_tpu_has_is_a_user_error_naming_the_sizes():
    with pytest.raises(UserError, match=r"no standard v5p slice has 12 chips.*v5p-8, v5p-16"):
        target_devices(parse_topology("v5p-24"))


@needs_gpu_compiler
def test_small_decoder_step_compiled_for_two_h100s_matches_the_estimate():
    # XLA's attention: at this size cuDNN's [T, S] mask planes per row (its bias and the bias's
    # gradient) are a fifth of the step, which the estimate does not follow closely.
    model = presets.get_preset("test-tiny").replace(dtype="bfloat16", attention="xla")
    work = Workload(model, OptimizerConfig(name="adamw"), batch_size=8, seq_len=512, steps=10, loss_fn=lm_loss,
                    platform="cuda")
    layout = Layout(1, 1, 2, 1, "fsdp", "none", 1)
    compiled = lower_step(work, layout, compile=True, devices=target_devices(parse_topology("2xH100")))
    assert compiled["platform"] == "cuda" and compiled["devices"] == 2
    assert work.memory(layout).total == pytest.approx(compiled["compiler_bytes_per_chip"], rel=0.10)
    state = work.state_bytes(layout)
    assert compiled["memory_analysis"]["arguments"] >= state[0] + state[2]  # params and AdamW moments


def symtune_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "symtune.cli", "plan", *args],
                          capture_output=True, text=True, timeout=900)


@needs_tpu_compiler
def test_plan_compile_for_a_v5p_slice_reports_the_tpu_compilers_memory(tmp_path):
    proc = symtune_plan("--gin_file=models/test-tiny", "--gin.TrainData.batch_size=8", "--gin.TrainData.seq_len=512",
                        "--gin.MeshConfig.fsdp=-1", "--gin.MeshConfig.data=1", "--gin.MeshConfig.rules='fsdp'",
                        # XLA's attention: at this size the splash kernel's fixed per-layer buffers, which
                        # the planner does not count, are a third of the step (at 8B they are noise)
                        "--gin.model_config.overrides={'dtype': 'bfloat16', 'attention': 'xla'}", "--topology=v5p-8",
                        "--compile",
                        f"--out={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "compiled     the train step (configured layout) for 4 TPU devices" in proc.stdout
    compiled = json.loads((tmp_path / "plan.json").read_text())["compiled"]["configured"]
    assert compiled["platform"] == "tpu" and compiled["fits"]
    assert compiled["estimate_bytes_per_chip"] == pytest.approx(compiled["compiler_bytes_per_chip"], rel=0.10)


def test_plan_compile_without_the_target_compiler_falls_back_to_xla_cpu_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr("symtune.plan.targets.compiler_installed", lambda platform: False)
    parse_gin(["models/test-tiny"], ["TrainData.batch_size=8", "TrainData.seq_len=128"])
    plan = make_plan(parse_topology("8xH100"), compile=True)
    assert "the CUDA compiler is not installed" in capsys.readouterr().out
    compiled = plan["compiled"]["configured"]
    assert compiled["platform"] == "cpu" and compiled["devices"] == 8 and compiled["compiler_bytes_per_chip"] > 0


def test_a_mesh_that_does_not_divide_the_slice_is_one_line_and_exit_2(capsys):
    assert cli.main(["plan", "--gin_file=models/test-tiny", "--gin.TrainData.seq_len=128", "--gin.MeshConfig.tensor=3",
                     "--topology=v5p-16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not divide the 8 devices" in err[0]


def test_a_run_no_layout_fits_names_the_smallest_slice_that_fits():
    parse_gin(["models/pythia-1b"], ["TrainData.batch_size=4", "TrainData.seq_len=512",
                                     "MeshConfig.data=-1", "OptimizerConfig.name='adamw'"])
    plan = make_plan(parse_topology("v5e-1"), lower=False)
    assert not plan["fits"] and plan["suggestion"] is None
    larger = plan["larger_slice"]
    assert larger["topology"] == "v5e-4" and larger["memory_bytes"]["total"] <= plan["budget_bytes"]


@pytest.mark.slow
@needs_tpu_compiler
def test_llama_3_8b_on_v5p_64_estimate_within_10_percent_of_the_tpu_compiler(tmp_path):
    proc = symtune_plan("--gin_file=runs/symtune_finetune", "--gin_file=models/llama-3-8b", "--gin_file=meshes/fsdp",
                        "--topology=v5p-64", "--compile", f"--out={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    compiled = json.loads((tmp_path / "plan.json").read_text())["compiled"]["configured"]
    assert compiled["platform"] == "tpu" and compiled["fits"]
    assert compiled["estimate_bytes_per_chip"] == pytest.approx(compiled["compiler_bytes_per_chip"], rel=0.10)


@needs_tpu_compiler
def test_a_step_over_hbm_counts_with_the_tpu_compilers_figure():
    model = presets.get_preset("test-tiny").replace(dtype="bfloat16", max_positions=4096, attention="xla")
    work = Workload(model, OptimizerConfig(name="adamw"), batch_size=64, seq_len=4096, steps=10, loss_fn=lm_loss,
                    platform="tpu")
    compiled = lower_step(work, Layout(1, 1, 1, 1, "dp", "none", 1), compile=True,
                          devices=target_devices(parse_topology("v5e-1")))
    assert compiled["out_of_memory"] and compiled["compiler_bytes_per_chip"] > 16 * GiB  # a v5e chip's HBM


@pytest.mark.parametrize("kernel, platform, target", [
    pytest.param("splash", "tpu", "v5p-8", marks=needs_tpu_compiler),
    pytest.param("cudnn", "cuda", "4xH100", marks=needs_gpu_compiler),
])
def test_a_decoder_step_compiled_with_the_targets_attention_kernel_holds_no_scores(kernel, platform, target):
    model = presets.get_preset("test-tiny").replace(dtype="bfloat16")
    layout = Layout(1, 1, 4, 1, "fsdp", "none", 1)

    def compiled(attention: str, batch: int, seq_len: int) -> dict:
        work = Workload(model.replace(attention=attention, max_positions=seq_len), OptimizerConfig(name="adamw"),
                        batch_size=batch, seq_len=seq_len, steps=10, loss_fn=lm_loss, platform=platform)
        assert work.attention == attention
        return lower_step(work, layout, compile=True, devices=target_devices(parse_topology(target)))

    # Twice the tokens per row, half the rows: XLA's score arrays (per head, float32) double;
    # the kernel's step grows by at most a quarter as much (cuDNN keeps one [T, S] bias plane per
    # row, shared by the heads; splash nothing).
    short, long = {a: compiled(a, 8, 1024)["compiler_bytes_per_chip"] for a in (kernel, "xla")}, {
        a: compiled(a, 4, 2048)["compiler_bytes_per_chip"] for a in (kernel, "xla")}
    assert short[kernel] < short["xla"] and long[kernel] < long["xla"]
    assert long[kernel] - short[kernel] < (long["xla"] - short["xla"]) / 4
