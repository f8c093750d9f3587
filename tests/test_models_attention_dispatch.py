"""Which attention a step runs: resolved from DecoderConfig.attention and the platform it compiles for."""

import logging

import jax.numpy as jnp
import pytest

from symtune.errors import UserError
from symtune.models import attention, cpu_attention
from symtune.models.attention import attention_kernel
from symtune.models.platform import traced_as

Q, K = (2, 512, 8, 64), (2, 512, 2, 64)


def kernel(impl: str, platform: str, q=Q, k=K, causal: bool = True, dtype=jnp.bfloat16) -> str:
    with traced_as(platform):
        return attention_kernel(impl, q, k, causal=causal, dtype=dtype)


def test_auto_runs_splash_on_tpu_and_xla_on_gpu():
    assert kernel("auto", "tpu") == "splash"
    assert kernel("auto", "gpu") == "xla"
    assert kernel("auto", "tpu", q=(2, 100, 8, 64), k=(2, 100, 2, 64)) == "xla"  # splash tiles by 128


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


@pytest.mark.parametrize("platform, shapes, reason", [
    ("cpu", (Q, K), "runs on TPUs only, and this step compiles for cpu"),
    ("gpu", (Q, K), "runs on TPUs only, and this step compiles for gpu"),
    ("tpu", ((2, 100, 8, 64), (2, 100, 2, 64)), "multiples of 128"),
    ("tpu", ((2, 512, 6, 64), (2, 512, 4, 64)), "multiple of key/value heads"),
])
def test_splash_where_it_cannot_run_is_one_line_naming_the_fix(platform, shapes, reason):
    with pytest.raises(UserError, match=reason) as error:
        kernel("splash", platform, *shapes)
    assert "use attention='auto' or 'xla'" in str(error.value) and "\n" not in str(error.value)
