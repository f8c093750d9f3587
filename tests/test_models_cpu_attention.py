"""The fused CPU attention kernel against XLA's attention, and when the decoder uses it."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from symtune.errors import UserError
from symtune.models import cpu_attention
from symtune.models.attention import attend, attention_mask
from symtune.models.config import DecoderConfig
from symtune.models.decoder import Decoder
from symtune.models.presets import get_preset
from symtune.train.mesh import MeshConfig, logical_rules, make_mesh


def _operands(b, t, s, h, kv, d, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32)
    k, v, w = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((b, s, kv, d), (b, s, kv, d), (b, t, h, d)))
    return q, k, v, w


def _masks(b, t):
    segments = jnp.asarray([[1] * (t // 2) + [2] * (t // 3) + [0] * (t - t // 2 - t // 3)] * b)
    prefix = jnp.broadcast_to(jnp.arange(t) < t // 3, (b, t))
    return {
        "causal": attention_mask(None, None, b, t),
        "packed": attention_mask(segments, None, b, t),
        "prefix": attention_mask(None, prefix, b, t),
    }


def _value_and_grads(fn, q, k, v, mask, w):
    # Rows without any allowed key (padding) are left out of the loss: XLA's custom softmax
    # derivative sends them a gradient the true derivative does not have.
    live = jnp.any(mask, axis=-1)[..., None, None]
    loss = lambda q, k, v: jnp.sum(jnp.where(live, fn(q, k, v, mask), 0) * w)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("kind", ["causal", "packed", "prefix"])
@pytest.mark.parametrize("t, heads, kv_heads, head_dim", [(41, 2, 1, 8), (70, 4, 2, 16), (130, 4, 4, 32), (67, 2, 1, 64), (37, 3, 3, 96), (33, 2, 2, 128)])
def test_fused_attention_matches_xla_in_value_and_gradient(kind, t, heads, kv_heads, head_dim):
    q, k, v, w = _operands(2, t, t, heads, kv_heads, head_dim)
    mask = _masks(2, t)[kind]
    xla = lambda q, k, v, m: attend(q, k, v, m, causal=False, block=256, impl="xla")
    want_out, got_out = xla(q, k, v, mask), jax.jit(cpu_attention.fused_attention)(q, k, v, mask)
    np.testing.assert_allclose(got_out, want_out, atol=2e-6)
    (want, want_grads), (got, got_grads) = (_value_and_grads(f, q, k, v, mask, w)
                                            for f in (xla, cpu_attention.fused_attention))
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    for name, a, b in zip("qkv", got_grads, want_grads):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"d{name}")


def test_fused_attention_over_a_cache_with_empty_slots_and_a_query_without_keys():
    # Decoding shape: 3 new tokens over 9 cache slots; batch row 1 has slots 0-1 unwritten, and its
    # first query sees no valid slot at all (XLA's softmax then averages every value, and so must we).
    q, k, v, _ = _operands(2, 3, 9, 2, 2, 16, seed=1)
    valid = jnp.asarray([[True] * 9, [False, False] + [True] * 7])
    mask = (jnp.arange(9)[None, :] <= jnp.asarray([1, 4, 6])[:, None])[None] & valid[:, None, :]
    got = jax.jit(cpu_attention.fused_attention)(q, k, v, mask)
    np.testing.assert_allclose(got, attend(q, k, v, mask, causal=False, block=256, impl="xla"), atol=2e-6)
    np.testing.assert_allclose(got[1, 0], jnp.mean(v[1], axis=0), atol=2e-6)


def _tiny(**change):
    return get_preset("test-tiny").replace(dtype="float32", **change)


def _custom_calls(config, tokens):
    model = Decoder(config, rngs=nnx.Rngs(0))
    graph, state = nnx.split(model)
    text = jax.jit(lambda s, x: nnx.merge(graph, s)(x)).lower(state, tokens).as_text()
    return {name for name in (cpu_attention.FORWARD, "dot_general") if name in text}


def test_decoder_uses_the_kernel_on_one_cpu_device_in_float32_and_gets_xlas_numbers():
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 100, size=(2, 40)))
    assert cpu_attention.FORWARD in _custom_calls(_tiny(), tokens)
    assert cpu_attention.FORWARD not in _custom_calls(_tiny(attention="xla"), tokens)
    assert cpu_attention.FORWARD not in _custom_calls(_tiny().replace(dtype="bfloat16"), tokens)

    def loss_and_grads(config):
        return nnx.jit(nnx.value_and_grad(lambda m: jnp.mean(m(tokens) ** 2)))(Decoder(config, rngs=nnx.Rngs(0)))

    (fused, fused_grads), (xla, xla_grads) = loss_and_grads(_tiny()), loss_and_grads(_tiny(attention="xla"))
    assert float(fused) == pytest.approx(float(xla), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), fused_grads, xla_grads)


def test_a_mesh_of_several_devices_keeps_xlas_attention():
    tokens = jnp.ones((8, 16), jnp.int32)
    mesh = make_mesh(MeshConfig(data=8), jax.devices()[:8])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(logical_rules("fsdp")):
        assert cpu_attention.FORWARD not in _custom_calls(_tiny(), tokens)


def test_without_a_compiler_attention_falls_back_to_xla_with_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SYMTUNE_KERNEL_CACHE", str(tmp_path / "cache"))
    cpu_attention.available.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=cpu_attention.__name__):
            q, k, _, _ = _operands(1, 4, 4, 2, 2, 16)
            assert not cpu_attention.applies_to(q.shape, q.dtype) and not cpu_attention.applies_to(q.shape, q.dtype)
        assert [r.getMessage() for r in caplog.records] == [
            f"fused CPU attention unavailable, using XLA's: no C++ compiler ({tmp_path / 'no-such-compiler'}) "
            "on PATH; set CXX"]
    finally:
        monkeypatch.undo()
        cpu_attention.available.cache_clear()
    assert cpu_attention.available()  # built from the real cache and registered again


def test_the_kernel_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMTUNE_KERNEL_CACHE", str(tmp_path))
    first = cpu_attention.build("g++")
    assert first.parent == tmp_path and first.suffix == ".so"
    mtime = first.stat().st_mtime_ns
    assert cpu_attention.build("g++") == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left behind


def test_attention_config_value_is_checked():
    with pytest.raises(UserError, match="DecoderConfig.attention='flash'; choose from auto, xla"):
        DecoderConfig(vocab_size=8, num_layers=1, embed_dim=8, num_heads=1, num_kv_heads=1, head_dim=8,
                      mlp_dim=8, attention="flash")
