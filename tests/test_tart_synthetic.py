"""The synthetic logistic-regression sampler and its curriculum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symtune.errors import UserError
from tart.synthetic import SyntheticConfig, sample_batch, sample_task, step_batches


def test_curriculum_follows_the_paper_schedule():
    config = SyntheticConfig()
    assert [tuple(map(int, config.stage(s))) for s in (0, 999, 1000, 2500, 3000, 8000, 24000)] == [
        (4, 18), (4, 18), (8, 48), (12, 78), (16, 108), (16, 258), (16, 258)]
    assert config.final_step() == 8000


def test_inactive_dims_are_zero_and_each_stage_has_its_own_length():
    config = SyntheticConfig(max_examples=40, examples_start=10, examples_increment=20, interval=5)
    assert config.lengths() == (10, 30, 40)
    assert config.length_stages(12) == [(0, 5, 10), (5, 10, 30), (10, 12, 40)]
    assert config.length_stages(7) == [(0, 5, 10), (5, 7, 30)]
    xs, ys = sample_batch(config, jnp.full(4, 6), jnp.arange(4), 30)
    assert xs.shape == (4, 30, 16) and ys.shape == (4, 30)
    assert np.all(np.asarray(xs)[..., 8:] == 0) and np.all(np.asarray(xs)[..., :8] != 0)
    assert set(np.unique(np.asarray(ys))) <= {0.0, 1.0}


def test_labels_follow_the_sigmoid_of_the_task():
    config = SyntheticConfig()
    keys = jax.random.split(jax.random.key(1), 64)
    xs, ys, w = jax.vmap(lambda k: sample_task(k, config, 16))(keys)
    agree = float(np.mean((np.einsum("bnd,bd->bn", np.asarray(xs), np.asarray(w)) > 0) == (np.asarray(ys) > 0.5)))
    # With w ~ N(0, I)·10 in 16 dims, the Bayes-optimal sign rule is right ~98.5% of the time.
    assert 0.975 < agree < 0.995
    assert 0.45 < float(np.asarray(ys).mean()) < 0.55
    assert float(np.asarray(w).std()) == pytest.approx(10.0, rel=0.1)


def test_rows_are_independent_of_how_the_batch_is_split():
    config = SyntheticConfig(max_examples=20)
    whole = sample_batch(config, jnp.full(8, 3), jnp.arange(8), 20)
    halves = [sample_batch(config, jnp.full(4, 3), jnp.arange(4) + 4 * i, 20) for i in range(2)]
    for a, b0, b1 in zip(whole, *halves):
        np.testing.assert_array_equal(np.asarray(a), np.concatenate([np.asarray(b0), np.asarray(b1)]))
    other_step = sample_batch(config, jnp.full(8, 4), jnp.arange(8), 20)
    assert not np.array_equal(np.asarray(whole[0]), np.asarray(other_step[0]))


def test_step_batches_resume_where_they_left_off():
    first = step_batches(range(4, 8), start_step=0)
    batches = [next(first) for _ in range(3)]
    resumed = next(step_batches(range(4, 8), start_step=2))
    assert batches[2]["row"].tolist() == resumed["row"].tolist() == [4, 5, 6, 7]
    assert resumed["step"].tolist() == [2] * 4


def test_bad_curriculum_is_a_clear_error():
    with pytest.raises(UserError, match="dims_start <= dims"):
        SyntheticConfig(dims_start=20)
