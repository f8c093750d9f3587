"""Scoring candidates and greedy decoding with a KV cache, against plain full forward passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from symtune.errors import UserError
from symtune.models.decode import greedy_decode, score_continuations
from symtune.models.decoder import Decoder
from symtune.models.presets import get_preset
from symtune.train.mesh import MeshConfig, logical_rules, make_mesh

PROMPTS = [[5, 9, 13, 2], [7, 1], [3, 3, 8, 21, 40, 11]]
CANDIDATES = [[[4], [6, 7]], [[9, 9, 9], [1], [2, 30]], [[17, 18]]]


@pytest.fixture(scope="module")
def model():
    return Decoder(get_preset("test-tiny"), rngs=nnx.Rngs(0))


PADDED = 16
forward = nnx.jit(lambda model, tokens: model(tokens))


def causal_logits(model, tokens):
    """Logits of a token list, right-padded to one length (a causal model ignores what follows)."""
    padded = jnp.asarray([list(tokens) + [0] * (PADDED - len(tokens))])
    return forward(model, padded)[0, :len(tokens)]


def full_logprob(model, prompt, candidate):
    logprobs = jax.nn.log_softmax(causal_logits(model, prompt + candidate), axis=-1)
    return sum(float(logprobs[len(prompt) + k - 1, t]) for k, t in enumerate(candidate))


def naive_greedy(model, prompt, steps):
    tokens = list(prompt)
    for _ in range(steps):
        tokens.append(int(jnp.argmax(causal_logits(model, tokens)[-1])))
    return tokens[len(prompt):]


def test_scores_are_summed_candidate_log_probs(model):
    scores = score_continuations(model, PROMPTS, CANDIDATES, batch_size=4)
    assert scores.logprob.shape == (3, 3) and scores.num_tokens.shape == (3, 3)
    for i, (prompt, candidates) in enumerate(zip(PROMPTS, CANDIDATES)):
        for j, candidate in enumerate(candidates):
            assert scores.num_tokens[i, j] == len(candidate)
            assert scores.logprob[i, j] == pytest.approx(full_logprob(model, prompt, candidate), abs=1e-4)
    assert scores.logprob[0, 2] == -np.inf and scores.num_tokens[2, 1] == 0


def test_scores_do_not_depend_on_batching(model):
    one = score_continuations(model, PROMPTS, CANDIDATES, batch_size=1, length_multiple=8)
    many = score_continuations(model, PROMPTS, CANDIDATES, batch_size=16)
    np.testing.assert_allclose(one.logprob, many.logprob, atol=1e-5)


def test_prefix_lm_scoring_differs_from_causal(model):
    causal = score_continuations(model, PROMPTS, CANDIDATES)
    prefix = score_continuations(model, PROMPTS, CANDIDATES, prefix_lm=True)
    assert np.all(np.isfinite(prefix.logprob[prefix.num_tokens > 0]))
    assert not np.allclose(causal.logprob[0], prefix.logprob[0])


def test_greedy_with_cache_matches_recomputing_ragged_prompts(model):
    result = greedy_decode(model, PROMPTS, max_new_tokens=6)
    assert result.tokens.shape == (3, 6)
    np.testing.assert_array_equal(result.lengths, [6, 6, 6])
    for prompt, row in zip(PROMPTS, result.tokens):
        assert list(row) == naive_greedy(model, prompt, 6)


def test_greedy_pads_prompts_to_a_length_multiple_and_compiles_once_per_bucket(model):
    from symtune.models.decode import _greedy

    exact = greedy_decode(model, PROMPTS, max_new_tokens=5, length_multiple=1).tokens
    np.testing.assert_array_equal(greedy_decode(model, PROMPTS, max_new_tokens=5, length_multiple=32).tokens, exact)
    before = _greedy._cache_size()
    for pair in ([PROMPTS[0], PROMPTS[1]], [PROMPTS[2], [8] * 30], [[4] * 13, [8] * 20]):  # 4, 30, 20 tokens
        greedy_decode(model, pair, max_new_tokens=5, length_multiple=32)
    assert _greedy._cache_size() - before == 1


def test_greedy_stops_at_stop_sequence_and_eos(model):
    free = greedy_decode(model, [PROMPTS[0]], max_new_tokens=8).tokens[0]
    stopped = greedy_decode(model, [PROMPTS[0]], max_new_tokens=8, stop_sequences=[list(free[2:4])], pad_id=-1)
    assert stopped.lengths[0] == 4
    assert list(stopped.tokens[0]) == list(free[:4]) + [-1] * 4
    eos = greedy_decode(model, [PROMPTS[0]], max_new_tokens=8, eos_id=int(free[1]), pad_id=-1)
    assert eos.lengths[0] == 2 and list(eos.tokens[0, 2:]) == [-1] * 6


def test_scoring_and_decoding_run_sharded_with_same_results(model):
    expected_scores = score_continuations(model, PROMPTS, CANDIDATES)
    expected_tokens = greedy_decode(model, PROMPTS, max_new_tokens=4).tokens
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2, rules="fsdp+tp"))
    with jax.set_mesh(mesh), nnx.logical_axis_rules(logical_rules("fsdp+tp")):
        sharded = Decoder(get_preset("test-tiny"), rngs=nnx.Rngs(0))
        scores = score_continuations(sharded, PROMPTS, CANDIDATES)
        tokens = greedy_decode(sharded, PROMPTS, max_new_tokens=4).tokens
    np.testing.assert_allclose(scores.logprob, expected_scores.logprob, atol=1e-4)
    np.testing.assert_array_equal(tokens, expected_tokens)


def test_bad_requests_are_user_errors(model):
    with pytest.raises(UserError, match="empty"):
        score_continuations(model, [[]], [[[1]]])
    with pytest.raises(UserError, match="max_new_tokens"):
        greedy_decode(model, [[1]], max_new_tokens=0)
