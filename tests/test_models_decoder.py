"""Decoder behaviour: masks (causal, packed, prefix-LM), the embeddings path, remat/scan, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from symtune.errors import UserError
from symtune.models.attention import attend, attention_mask, score_elements
from symtune.models.decoder import Decoder, DecoderStack
from symtune.models.presets import get_preset

CONFIG = get_preset("test-tiny")
forward = nnx.jit(lambda model, tokens, **kw: model(tokens, **kw))


@pytest.fixture(scope="module")
def model():
    return Decoder(CONFIG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 12)), jnp.int32)


def test_logits_are_causal(model, tokens):
    changed = tokens.at[:, 8].set((tokens[:, 8] + 1) % CONFIG.vocab_size)
    a, b = forward(model, tokens), forward(model, changed)
    assert a.shape == (2, 12, CONFIG.vocab_size) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a[:, :8], b[:, :8])
    assert not np.allclose(a[:, 8:], b[:, 8:])


def test_prefix_tokens_see_the_whole_prefix_and_targets_stay_causal(model, tokens):
    prefix = jnp.broadcast_to(jnp.arange(12) < 6, (2, 12))
    changed_prefix = tokens.at[:, 5].set((tokens[:, 5] + 1) % CONFIG.vocab_size)
    changed_target = tokens.at[:, 9].set((tokens[:, 9] + 1) % CONFIG.vocab_size)
    base = forward(model, tokens, prefix_mask=prefix)
    assert not np.allclose(base[:, 0], forward(model, changed_prefix, prefix_mask=prefix)[:, 0])
    np.testing.assert_array_equal(base[:, :9], forward(model, changed_target, prefix_mask=prefix)[:, :9])


def test_packed_segments_do_not_see_each_other(model, tokens):
    segments = jnp.asarray([[1] * 5 + [2] * 7] * 2)
    positions = jnp.asarray([list(range(5)) + list(range(7))] * 2)
    packed = forward(model, tokens, segment_ids=segments, positions=positions)
    alone = forward(model, tokens[:, 5:])
    np.testing.assert_allclose(packed[:, 5:], alone, atol=1e-5)


def test_inputs_embeds_and_hidden_states(model, tokens):
    embeds = model.embed(tokens)
    np.testing.assert_allclose(model(inputs_embeds=embeds), model(tokens), atol=1e-6)
    hidden = model.hidden_states(tokens)
    assert hidden.shape == (2, 12, CONFIG.embed_dim) and hidden.dtype == jnp.float32
    np.testing.assert_allclose(model.logits(hidden), model(tokens), atol=1e-5)


def test_stack_runs_on_embeddings_with_learned_positions():
    config = get_preset("gpt2").replace(num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=4, head_dim=8,
                                        mlp_dim=64, max_positions=16, vocab_size=8, dtype="float32")
    stack = nnx.jit(lambda: DecoderStack(config, rngs=nnx.Rngs(0)))()
    assert stack.pos_embed.embedding.get_value().shape == (16, 32)
    x = jax.random.normal(jax.random.key(1), (3, 10, 32))
    hidden, cache = nnx.jit(lambda s, x: s(x))(stack, x)
    assert hidden.shape == (3, 10, 32) and cache is None


@pytest.mark.parametrize("block", [256, 128])
def test_causal_query_blocks_match_unblocked_attention(block):
    t = block * 2 + 37
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, t, 4, 16)), jnp.float32)
    k, v = jnp.asarray(rng.normal(size=(2, 2, t, 2, 16)), jnp.float32)
    segments = jnp.asarray([[1] * 100 + [2] * (t - 140) + [0] * 40] * 2)
    mask = attention_mask(segments, None, 2, t)
    real = np.asarray(segments > 0)

    def loss(qkv, causal):
        out = attend(*qkv, mask, causal=causal, block=block, impl="xla")
        return jnp.sum(jnp.where(real[..., None, None], out, 0) ** 2), out

    (_, out_a), grads_a = jax.value_and_grad(loss, has_aux=True)((q, k, v), True)
    (_, out_b), grads_b = jax.value_and_grad(loss, has_aux=True)((q, k, v), False)
    np.testing.assert_allclose(out_a[real], out_b[real], atol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-4), grads_a, grads_b)


@pytest.mark.parametrize("t, causal, block", [(549, True, 256), (549, False, 256), (100, True, 256), (300, True, 128)])
def test_score_elements_counts_the_scores_attend_computes(t, causal, block):
    # symtune plan sizes attention's backward from this count.
    q = jax.ShapeDtypeStruct((1, t, 4, 8), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, t, 2, 8), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, t, t), jnp.bool_)
    jaxpr = jax.make_jaxpr(lambda q, k, v, m: attend(q, k, v, m, causal=causal, block=block, impl="xla"))(q, kv, kv, mask)
    scores = [e.outvars[0].aval for e in jaxpr.eqns
              if e.primitive.name == "custom_jvp_call" and e.params["call_jaxpr"].jaxpr.eqns]
    assert sum(int(np.prod(a.shape)) for a in scores) == 4 * score_elements(t, causal, block)


@pytest.mark.parametrize("change", [
    {"remat_policy": "save_nothing"},
    pytest.param({"remat_policy": "save_projections"}, marks=pytest.mark.slow),
    pytest.param({"scan_layers": False}, marks=pytest.mark.slow),
])
def test_remat_and_unrolled_layers_give_same_logits_and_grads(tokens, change):
    def loss(model):
        return jnp.mean(model(tokens) ** 2)

    grad = nnx.jit(nnx.value_and_grad(loss))
    value, grads = grad(Decoder(CONFIG, rngs=nnx.Rngs(0)))
    value2, grads2 = grad(Decoder(CONFIG.replace(**change), rngs=nnx.Rngs(0)))
    assert value2 == pytest.approx(float(value), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, grads2)


def test_dropout_needs_a_key_and_is_reproducible(tokens):
    model = Decoder(CONFIG.replace(dropout_rate=0.5), rngs=nnx.Rngs(0))
    key = jax.random.key(7)
    a = model(tokens, deterministic=False, dropout_key=key)
    np.testing.assert_array_equal(a, model(tokens, deterministic=False, dropout_key=key))
    assert not np.allclose(a, model(tokens))
    np.testing.assert_array_equal(model(tokens), model(tokens, dropout_key=key))
    with pytest.raises(ValueError, match="dropout_key"):
        model(tokens, deterministic=False)


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32(model, tokens):
    bf16 = Decoder(CONFIG.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    logits = bf16(tokens)
    assert logits.dtype == jnp.float32
    assert bf16.embed.embedding.get_value().dtype == jnp.float32
    np.testing.assert_allclose(logits, model(tokens), atol=0.05)


@pytest.mark.parametrize("change", [{"num_kv_heads": 3}, {"norm": "batchnorm"}, {"dropout_rate": 1.0},
                                    {"rotary_fraction": 0.1}, {"no_such_field": 1}])
def test_bad_configs_are_user_errors(change):
    with pytest.raises(UserError):
        CONFIG.replace(**change)


@pytest.mark.parametrize("name, approximate", [("gelu", False), ("gelu_tanh", True)])
def test_gelus_match_jax_in_value_and_gradient(name, approximate):
    from symtune.models.layers import activation

    x = jnp.linspace(-8.0, 8.0, 4001)
    ours, theirs = (lambda v: activation(name, v)), (lambda v: jax.nn.gelu(v, approximate=approximate))
    np.testing.assert_allclose(jax.jit(ours)(x), theirs(x), atol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(ours))(x), jax.vmap(jax.grad(theirs))(x), atol=1e-5)


@pytest.mark.parametrize("old, new", [("full", "save_nothing"), ("dots", "save_projections"),
                                      ("dots_no_batch", "save_projections")])
def test_renamed_remat_policies_say_their_new_names(old, new):
    with pytest.raises(UserError, match=f"remat_policy='{old}' is now '{new}'"):
        get_preset("test-tiny").replace(remat_policy=old)


@pytest.mark.parametrize("gated", [True, False])
def test_backward_keeps_the_mlp_input_projections_and_the_norms_input_only(gated):
    # What a layer costs in accelerator memory: the MLP keeps its input projections' outputs (the
    # activation and product are recomputed), a norm its input in the compute dtype.
    from jax._src.ad_checkpoint import saved_residuals

    from symtune.models.layers import Mlp, Norm

    config = CONFIG.replace(dtype="bfloat16", mlp_dim=96, gated_mlp=gated, activation="silu" if gated else "gelu")
    x = jnp.ones((2, 8, config.embed_dim), jnp.bfloat16)
    with nnx.use_eager_sharding(False):  # no mesh: plain arrays, as Decoder makes them
        modules = ((Mlp(config, rngs=nnx.Rngs(0)), 2 if gated else 1), (Norm(config, rngs=nnx.Rngs(0)), 0))
    for module, kept in modules:
        graphdef, params = nnx.split(module)
        loss = lambda p, x: nnx.merge(graphdef, p)(x).astype(jnp.float32).sum()  # noqa: E731
        residuals = [aval for aval, _ in saved_residuals(loss, params, x) if aval.shape[:2] == (2, 8)]
        assert sum(aval.shape == (2, 8, 96) for aval in residuals) == kept
        assert not [aval for aval in residuals if aval.dtype == jnp.float32 and aval.shape == x.shape]
