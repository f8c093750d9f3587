"""Training batches: PrefixLM layout, packing weights only targets, sharding, resumption."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from symtune.data.pipeline import FEATURES, TrainData, train_batches
from symtune.data.sources import DataConfig
from symtune.data.vocab import DEFAULT_VOCAB_SIZE, default_vocabulary
from symtune.errors import UserError

SEQ = 512


@pytest.fixture(scope="module")
def config(data_dir):
    return DataConfig(data_dir=str(data_dir))


def missing_from_manifest(data_dir) -> list[str]:
    """The tuning datasets, in mixture order, that the data directory's MANIFEST has no train split of."""
    from symtune.data.sources import read_manifest
    from symtune.data.tasks import tuning_specs

    listed = read_manifest(data_dir)
    return [spec.name for spec in tuning_specs("symbol_tuning")
            if not any(f"{spec.path}/{split}.jsonl" in listed for split in spec.train_splits)]


def batches(config, **kw):
    args = dict(batch_size=4, seq_len=SEQ, seed=3, shard_index=0, shard_count=1,
                skip_missing=True, config=config)
    args.update(kw)
    return train_batches("symbol_tuning", "default", **args)


def test_batch_shapes_dtypes_and_missing_datasets(config, data_dir):
    it = batches(config)
    batch = next(it)
    assert set(batch) == set(FEATURES)
    assert all(v.shape == (4, SEQ) and v.dtype == np.int32 for v in batch.values())
    assert it.missing == missing_from_manifest(data_dir)
    assert batch["decoder_target_tokens"].max() < DEFAULT_VOCAB_SIZE == default_vocabulary().vocab_size


def test_resuming_at_step_7_equals_the_8th_batch(config):
    it = batches(config)
    from_start = [next(it) for _ in range(8)][7]
    resumed = next(batches(config, start_step=7))
    for name in FEATURES:
        np.testing.assert_array_equal(resumed[name], from_start[name])
    assert it.step == 8
    other_seed = next(batches(config, seed=4, start_step=7))
    assert not np.array_equal(other_seed["decoder_target_tokens"], resumed["decoder_target_tokens"])


def test_hosts_split_the_global_batch_independently_of_host_count(config):
    whole = next(batches(config))
    halves = [next(batches(config, batch_size=4, shard_index=k, shard_count=2)) for k in (0, 1)]
    for name in FEATURES:
        np.testing.assert_array_equal(np.concatenate([h[name] for h in halves]), whole[name])
    with pytest.raises(UserError, match="batch_size=5 is not divisible by the 2 hosts"):
        batches(config, batch_size=5, shard_count=2)


def test_hosts_default_to_the_jax_process():
    from symtune.data.pipeline import host_rows

    assert host_rows(8, None, None) == range(0, 8)  # one process: all rows


def test_packed_rows_weight_only_target_tokens(config):
    vocab = default_vocabulary()
    it = batches(config, batch_size=2, seq_len=1024)
    batch = next(it)
    assert batch["decoder_segment_ids"].max() >= 2  # several prompts share a row
    for r in range(2):
        seg = batch["decoder_segment_ids"][r]
        tokens, weights = batch["decoder_target_tokens"][r], batch["decoder_loss_weights"][r]
        causal, positions = batch["decoder_causal_attention"][r], batch["decoder_positions"][r]
        inputs = batch["decoder_input_tokens"][r]
        for s in range(1, seg.max() + 1):
            where = np.flatnonzero(seg == s)
            w = weights[where]
            n_inputs = int((w == 0).sum())
            assert (w[:n_inputs] == 0).all() and (w[n_inputs:] == 1).all()  # loss on targets only
            target = vocab.decode(tokens[where][n_inputs:].tolist())  # target symbol + EOS
            prompt = vocab.decode(tokens[where][:n_inputs].tolist())
            assert target and tokens[where][-1] == vocab.eos_id and target not in ("",)
            assert prompt.count(target) >= 1  # the symbol appears on the prompt's exemplars
            assert (causal[where][: n_inputs + 1] == 1).all() and (causal[where][n_inputs + 1:] == 0).all()
            np.testing.assert_array_equal(positions[where], np.arange(len(where)))
            assert inputs[where][0] == 0
            np.testing.assert_array_equal(inputs[where][1:], tokens[where][:-1])
        assert (weights[seg == 0] == 0).all() and (tokens[seg == 0] == 0).all()
    assert it.stats.target_tokens == int(batch["decoder_loss_weights"].sum())


def test_features_match_seqio_prefix_lm_converter(config):
    """Unpacked rows equal seqio's PrefixLMFeatureConverter on the same (inputs, targets)."""
    it = batches(config, batch_size=2, pack=False)
    batch = next(it)
    vocab = default_vocabulary()
    examples = []
    for r in range(2):
        seg, w = batch["decoder_segment_ids"][r], batch["decoder_loss_weights"][r]
        tokens = batch["decoder_target_tokens"][r][seg == 1]
        n = int((w[seg == 1] == 0).sum())
        examples.append({"inputs": tokens[:n], "targets": tokens[n:]})
    ds = tf.data.Dataset.from_generator(
        lambda: iter(examples), output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                                                   "targets": tf.TensorSpec([None], tf.int32)})
    converter = seqio.PrefixLMFeatureConverter(pack=False)
    longest = max(len(e["inputs"]) for e in examples)
    lengths = {"inputs": longest, "targets": SEQ - longest}
    converted = list(converter(ds, lengths).as_numpy_iterator())
    assert vocab.eos_id == examples[0]["targets"][-1]
    for r, row in enumerate(converted):
        for name in ("decoder_target_tokens", "decoder_loss_weights", "decoder_causal_attention"):
            np.testing.assert_array_equal(row[name], batch[name][r], err_msg=name)
        # Unpacked seqio shifts EOS into the first padding position; we keep padding all 0
        # (as seqio's packed layout does). Padding carries no weight, so only real tokens count.
        real = batch["decoder_segment_ids"][r] > 0
        np.testing.assert_array_equal(row["decoder_input_tokens"][real],
                                      batch["decoder_input_tokens"][r][real])


def test_byte_vocabulary_and_train_data_config(config):
    data = TrainData(vocabulary="byte", batch_size=2, seq_len=SEQ, skip_missing=True, config=config)
    batch = next(data.batches(start_step=2, shard_index=0, shard_count=1))
    assert batch["decoder_target_tokens"].max() < 259
    text = bytes(t - 3 for t in batch["decoder_target_tokens"][0] if t >= 3).decode("utf-8", "replace")
    assert "\n\n" in text  # bytes keep the prompt's newlines


def test_missing_dataset_without_skip_fails_fast(config, data_dir):
    missing = missing_from_manifest(data_dir)
    if not missing:
        pytest.skip("the data directory holds every tuning dataset")
    with pytest.raises(UserError, match=f"dataset {missing[0]} .split train. not found"):
        train_batches("symbol_tuning", batch_size=2, seq_len=SEQ, config=config,
                      shard_index=0, shard_count=1)
    with pytest.raises(UserError, match="unknown tuning mixture or task 'nope'"):
        train_batches("nope", batch_size=2, seq_len=SEQ, shard_index=0, shard_count=1)


@pytest.mark.slow
def test_full_length_packed_batches_meet_the_throughput_target(config):
    import time

    it = batches(config, batch_size=32, seq_len=2048)
    next(it)
    start = time.perf_counter()
    for _ in range(5):
        next(it)
    rate = 5 * 32 / (time.perf_counter() - start)
    assert rate >= 100, f"{rate:.0f} sequences/s"
    assert it.stats.tokens / (6 * 32 * 2048) > 0.9  # packing fills rows


def test_baseline_setting_trains_on_natural_labels_with_instructions(config):
    from symtune.data.catalog import TUNING

    batch = batches(config, setting="instructions_natural").batch(0)
    vocab = default_vocabulary()
    row = batch["decoder_target_tokens"][0]
    text = vocab.decode(row[batch["decoder_segment_ids"][0] == 1].tolist())
    assert any(spec.instruction in text for spec in TUNING)
    targets = vocab.decode(row[(batch["decoder_loss_weights"][0] == 1) & (batch["decoder_segment_ids"][0] == 1)].tolist())
    assert any(targets.strip() in spec.labels for spec in TUNING), targets
