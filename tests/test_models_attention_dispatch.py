"""Which attention a step runs: resolved from DecoderConfig.attention and the platform it compiles for."""

import logging

import jax.numpy as jnp
import pytest

from symtune.errors import UserError
from symtune.models import attention, cpu_attention
from symtune.models.attention import attention_kernel
from symtune.models.kernels.cudnn import cudnn_installed
from symtune.models.platform import traced_as

Q, K = (2, 512, 8, 64), (2, 512, 2, 64)


def kernel(impl: str, platform: str, q=Q, k=K, causal: bool = True, dtype=jnp.bfloat16) -> str:
    with traced_as(platform):
        return attention_kernel(impl, q, k, causal=causal, dtype=dtype)


def test_auto_runs_splash_on_tpu_and_cudnn_on_gpu():
    assert kernel("auto", "tpu") == "splash"
    assert kernel("auto", "tpu", q=(2, 100, 8, 64), k=(2, 100, 2, 64)) == "xla"  # splash tiles by 128
    assert kernel("auto", "gpu") == ("cudnn" if cudnn_installed() else "xla")
    assert kernel("auto", "gpu", causal=False) == ("cudnn" if cudnn_installed() else "xla")  # PrefixLM: exact
    assert kernel("auto", "gpu", dtype=jnp.float32) == "xla"  # cuDNN takes 16-bit inputs only


def test_auto_on_one_cpu_device_runs_the_fused_kernel_in_float32_only():
    expected = "cpu" if cpu_attention.available() else "xla"
    assert kernel("auto", "cpu", dtype=jnp.float32) == expected
    assert kernel("auto", "cpu", dtype=jnp.bfloat16) == "xla"


def test_prefix_lm_rows_fall_back_to_xla_on_tpu_and_say_so_once(caplog):
    attention._say_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert kernel("auto", "tpu", causal=False) == "xla"
        assert kernel("auto", "tpu", causal=False) == "xla"
    assert [r.getMessage() for r in caplog.records] == [
        "rows with a bidirectional prefix (PrefixLM) take XLA's attention on TPU: splash attention's masks "
        "are fixed when the step compiles"]


@pytest.mark.parametrize("impl, platform, shapes, dtype, reason", [
    ("splash", "cpu", (Q, K), jnp.bfloat16, "runs on TPUs only, and this step compiles for cpu"),
    ("splash", "gpu", (Q, K), jnp.bfloat16, "runs on TPUs only, and this step compiles for gpu"),
    ("splash", "tpu", ((2, 100, 8, 64), (2, 100, 2, 64)), jnp.bfloat16, "multiples of 128"),
    ("splash", "tpu", ((2, 512, 6, 64), (2, 512, 4, 64)), jnp.bfloat16, "multiple of key/value heads"),
    ("cudnn", "tpu", (Q, K), jnp.bfloat16, "runs on GPUs only, and this step compiles for tpu"),
    ("cudnn", "cpu", (Q, K), jnp.bfloat16, "runs on GPUs only, and this step compiles for cpu"),
    ("cudnn", "gpu", (Q, K), jnp.float32, "takes bfloat16 or float16, not float32"),
    ("cudnn", "gpu", ((2, 512, 8, 256), (2, 512, 2, 256)), jnp.bfloat16, "multiples of 8 up to 128"),
])
def test_a_kernel_where_it_cannot_run_is_one_line_naming_the_fix(impl, platform, shapes, dtype, reason):
    if impl == "cudnn" and platform == "gpu" and not cudnn_installed():
        reason = "cuDNN is not installed"
    with pytest.raises(UserError, match=reason) as error:
        kernel(impl, platform, *shapes, dtype=dtype)
    assert f"DecoderConfig.attention='{impl}'" in str(error.value)
    assert "use attention='auto' or 'xla'" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("impl, platform", [("splash", "tpu"), ("cudnn", "gpu")])
def test_decoding_through_a_cache_takes_xla_attention_whatever_the_setting(impl, platform):
    from flax import nnx

    from symtune.models.decoder import Decoder
    from symtune.models.presets import get_preset

    config = get_preset("test-tiny").replace(attention=impl, dtype="bfloat16")
    model = Decoder(config, rngs=nnx.Rngs(0))
    with traced_as(platform):  # either kernel would refuse 3 new tokens (an odd length, not a multiple of 128)
        logits, cache = nnx.eval_shape(lambda m: m.extend(jnp.ones((2, 3), jnp.int32), m.init_cache(2, 8)), model)
    assert logits.shape == (2, 3, config.vocab_size) and cache.k.shape[2] == 8
