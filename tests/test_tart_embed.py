"""TART embeddings: pooling spans, the three modes, the PyTorch backends, PCA + whitening."""

import numpy as np
import pytest

from symtune.errors import UserError
from tart.embed import Whitening, embed, in_context, reduce


class CountingEncoder:
    """Each token's state is (its id, 1): pooled states reveal which tokens were averaged."""

    max_length = 12

    def tokenize(self, text):
        return [int(w) for w in text.split()]

    def frame(self, ids):
        return [100] + list(ids) + [101], 1

    def hidden_states(self, ids, mask):
        return np.stack([ids, np.ones_like(ids)], -1).astype(np.float32)


def test_stream_pools_each_text_with_its_special_tokens():
    train, test = embed(CountingEncoder(), ["1 2 3", "4"], [0, 1], ["5 6"])
    np.testing.assert_allclose(train[:, 0], [(100 + 6 + 101) / 5, (100 + 4 + 101) / 3])
    np.testing.assert_allclose(test[:, 0], [(100 + 11 + 101) / 4])


def test_in_context_pools_the_target_and_drops_the_oldest_context_to_fit():
    encoder = CountingEncoder()
    segment = in_context(encoder, [[1, 1, 1, 1], [2, 2, 2], [3, 3]], [7, 8, 9])
    # Room is 12 - 2 special tokens: the target (3) + [2,2,2] + [3,3] fit; [1,1,1,1] does not.
    assert segment.ids == [100, 2, 2, 2, 3, 3, 7, 8, 9, 101]
    assert segment.ids[segment.start:segment.stop] == [7, 8, 9]


def test_vanilla_and_loo_see_the_other_examples_with_labels():
    class Label(CountingEncoder):
        max_length = 64

        def tokenize(self, text):
            return [50 + ["zero", "one"].index(text.split()[-1])] if "Label" in text else super().tokenize(text)

    encoder = Label()
    train_v, test_v = embed(encoder, ["1", "2", "3"], [0, 1, 0], ["4"], mode="vanilla", label_names=["zero", "one"])
    train_l, _ = embed(encoder, ["1", "2", "3"], [0, 1, 0], ["4"], mode="loo", label_names=["zero", "one"])
    # Pooled spans are the example's own token; the contexts differ but the pooled ids do not.
    np.testing.assert_allclose(train_v[:, 0], [1, 2, 3])
    np.testing.assert_allclose(train_l[:, 0], [1, 2, 3])
    np.testing.assert_allclose(test_v[:, 0], [4])
    with pytest.raises(UserError, match="unknown embedding mode 'icl'"):
        embed(encoder, ["1"], [0], ["2"], mode="icl")


def test_whitening_gives_the_in_context_examples_identity_covariance():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((64, 40)) @ rng.standard_normal((40, 40)) + 3.0
    test = rng.standard_normal((10, 40))
    train_r, test_r = reduce(train, test, dims=16)
    assert train_r.shape == (64, 16) and test_r.shape == (10, 16)
    np.testing.assert_allclose(train_r.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(np.cov(train_r, rowvar=False), np.eye(16), atol=1e-4)


def test_whitening_zeroes_directions_the_examples_do_not_span():
    rng = np.random.default_rng(1)
    train = rng.standard_normal((10, 30))  # 10 points span 9 directions around their mean
    reduced = Whitening.fit(train, dims=16)(train)
    assert np.all(reduced[:, 9:] == 0) and np.all(np.isfinite(reduced))


@pytest.mark.needs_torch
def test_minilm_stream_embeddings_match_sentence_transformers():
    from tart.embed import SentenceTransformerEncoder, minilm_dir

    encoder = SentenceTransformerEncoder(minilm_dir())
    texts = ["a gripping, beautifully shot film", "dull and far too long", "I would watch it again"]
    train, test = embed(encoder, texts[:2], [1, 0], texts[2:])
    ours = np.concatenate([train, test])
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)  # the packaged model ends in Normalize
    np.testing.assert_allclose(ours, encoder.model.encode(texts), atol=1e-5)


@pytest.mark.needs_torch
def test_causal_torch_model_in_vanilla_mode_ignores_later_examples(tmp_path):
    import shutil

    from transformers import GPT2Config, GPT2Model

    from tart.embed import TorchEncoder, minilm_dir

    GPT2Model(GPT2Config(vocab_size=30522, n_positions=128, n_embd=32, n_layer=2, n_head=2)).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, tmp_path / name)
    encoder = TorchEncoder(tmp_path)
    texts = ["good film", "bad film", "fine film"]
    three, _ = embed(encoder, texts, [1, 0, 1], ["ok"], mode="vanilla", label_names=["neg", "pos"])
    two, _ = embed(encoder, texts[:2], [1, 0], ["ok"], mode="vanilla", label_names=["neg", "pos"])
    np.testing.assert_allclose(three[:2], two, atol=1e-5)
    assert not np.allclose(three[2], embed(encoder, texts[2:], [1], ["ok"])[0][0], atol=1e-3)


@pytest.mark.needs_torch
def test_our_decoder_backend_matches_the_same_model_in_pytorch(tmp_path):
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    from tart.embed import DecoderEncoder, TorchEncoder, minilm_dir

    GPT2LMHeadModel(GPT2Config(vocab_size=30522, n_positions=128, n_embd=32, n_layer=2, n_head=2)).save_pretrained(
        tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, tmp_path / name)
    ours, theirs = DecoderEncoder(tmp_path), TorchEncoder(tmp_path)
    texts = ["good film", "a bad, bad film", "fine"]
    for mode in ("stream", "loo"):
        a = embed(ours, texts[:2], [1, 0], texts[2:], mode=mode, label_names=["neg", "pos"])
        b = embed(theirs, texts[:2], [1, 0], texts[2:], mode=mode, label_names=["neg", "pos"])
        np.testing.assert_allclose(np.concatenate(a), np.concatenate(b), atol=1e-4, err_msg=mode)
    predicted = ours.classify_in_context(texts[:2], [1, 0], ["great film", "awful"], ["neg", "pos"])
    assert predicted.shape == (2,) and set(predicted.tolist()) <= {0, 1}


def test_texts_past_the_window_keep_their_first_tokens_with_one_warning():
    from tart.embed import TruncationWarning

    encoder = CountingEncoder()  # 12 tokens, 10 of them text
    long, longer = " ".join(["7"] * 15), " ".join(["9"] * 30)
    with pytest.warns(TruncationWarning) as caught:
        train, test = embed(encoder, [long, "1 2"], [0, 1], [longer, "3"])
    assert [str(w.message) for w in caught] == [
        "2 of 4 texts are longer than the encoder's window of 10 tokens (the longest has 30); each keeps its first 10"]
    np.testing.assert_allclose(train[0, 0], (100 + 10 * 7 + 101) / 12)
    np.testing.assert_allclose(test[0, 0], (100 + 10 * 9 + 101) / 12)
