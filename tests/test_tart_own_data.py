"""TART on the user's own data with the shipped tart-cpu head and MiniLM: `tart eval --data` (binary,
CSV, four classes one-vs-rest), `tart predict`, `TartClassifier`, and the README's example."""

import contextlib
import csv
import io
import json
import re
import warnings

import numpy as np
import pytest

from tart.cli import main

pytestmark = pytest.mark.needs_torch

AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")  # label ids 0-3 in ag_news/test.jsonl


@pytest.fixture(scope="module")
def ag_news(data_dir):
    """The first 40 articles of each AG News class (test split), shortened to their first 30 words."""
    path = data_dir / "ag_news" / "test.jsonl"
    if not path.is_file():
        pytest.skip("no ag_news/test.jsonl in the data bundle")
    by_class = {c: [] for c in range(4)}
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            if len(by_class[row["label"]]) < 40:
                by_class[row["label"]].append(" ".join(row["text"].split()[:30]))
    return by_class


def rows(ag_news, classes, per_class=40, field="topic"):
    """Articles of `classes` (interleaved), labelled with their class names under `field`."""
    return [{"text": ag_news[c][i], field: AG_NEWS_CLASSES[c]} for i in range(per_class) for c in classes]


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def eval_args(tmp_path, data, *flags, ks="(18, 32)"):
    return ["eval", f"--data={data}", f"--run_dir={tmp_path / 'run'}", f"--gin.TartEvalConfig.ks={ks}",
            "--gin.TartEvalConfig.draws=2", "--gin.TartEvalConfig.queries=30", *flags]


def test_eval_data_scores_tart_probe_and_knn_on_two_classes(ag_news, tmp_path, capsys):
    data = write_jsonl(tmp_path / "sports_vs_tech.jsonl", rows(ag_news, (1, 3)))
    assert main(eval_args(tmp_path, data, "--label_field=topic")) == 0
    out = capsys.readouterr().out
    assert "80 rows (Sci/Tech 40, Sports 40); 30 held-out queries, 50 in-context candidates" in out
    accuracy = json.loads((tmp_path / "run" / "results.json").read_text())["accuracy"]["sports_vs_tech"]
    for k in ("18", "32"):
        assert set(accuracy[k]) == {"tart", "probe", "knn"} and all(len(v) == 2 for v in accuracy[k].values())
        assert np.mean(accuracy[k]["tart"]) >= 0.85 and np.mean(accuracy[k]["probe"]) >= 0.85, accuracy[k]
    assert "| sports_vs_tech |" in (tmp_path / "run" / "table.md").read_text()


def test_eval_data_reads_csv_with_integer_labels(ag_news, tmp_path):
    data = tmp_path / "news.csv"
    with data.open("w", newline="") as f:  # texts with commas and quotes, quoted by the csv module
        csv.writer(f).writerows([("label", "text")] + [(c, ag_news[c][i]) for i in range(30) for c in (1, 3)])
    assert main(eval_args(tmp_path, data, ks="(18,)")) == 0
    accuracy = json.loads((tmp_path / "run" / "results.json").read_text())["accuracy"]["news"]["18"]
    assert np.mean(accuracy["tart"]) >= 0.8 and np.mean(accuracy["knn"]) >= 0.6, accuracy


def test_eval_data_runs_four_classes_one_vs_rest(ag_news, tmp_path):
    data = write_jsonl(tmp_path / "ag4.jsonl", rows(ag_news, range(4), per_class=25))
    assert main(eval_args(tmp_path, data, "--label_field=topic", ks="(32,)")) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    overall = results["accuracy"]["ag4"]["32"]
    per_class = results["per_class_accuracy"]["ag4"]
    assert set(per_class) == set(AG_NEWS_CLASSES)
    assert all(set(by_k["32"]) == {"tart", "probe", "knn"} for by_k in per_class.values())
    # Chance is 25%; MiniLM separates the four topics well (Sports best of all).
    assert np.mean(overall["tart"]) >= 0.6 and np.mean(overall["probe"]) >= 0.6, overall
    assert np.mean(per_class["Sports"]["32"]["tart"]) >= 0.8
    table = (tmp_path / "run" / "table.md").read_text()
    assert "ag4, 4 classes one-vs-rest" in table and "| Sci/Tech |" in table


def test_predict_on_the_examples_gives_back_their_labels(ag_news, tmp_path, capsys):
    examples = write_jsonl(tmp_path / "examples.jsonl", rows(ag_news, (0, 1), per_class=24, field="label"))
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", f"--examples={examples}", f"--queries={examples}", f"--out={out}"]) == 0
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    labels = [json.loads(line)["label"] for line in examples.read_text().splitlines()]
    assert len(predictions) == 48 and all(0.5 <= p["probability"] <= 1.0 for p in predictions)
    assert np.mean([p["label"] == y for p, y in zip(predictions, labels)]) >= 0.95
    # stdout when there is no --out: the same lines, nothing else
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"text": ag_news[1][30]}, {"text": ag_news[0][30]}])
    capsys.readouterr()
    assert main(["predict", f"--examples={examples}", f"--queries={queries}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["label"] for line in lines] == ["Sports", "World"]


def test_too_many_examples_are_subsampled_and_long_texts_truncated_each_with_one_note(ag_news, tmp_path, capsys):
    many = rows(ag_news, (1, 3), per_class=40, field="label")
    examples = write_jsonl(tmp_path / "examples.jsonl", many + [dict(r) for r in many])  # 160 > tart-cpu's 129
    long = " ".join([ag_news[3][0]] * 40)  # past MiniLM's 256-token window
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"text": ag_news[1][0]}, {"text": long}, {"text": long}])
    assert main(["predict", f"--examples={examples}", f"--queries={queries}"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "tart: note: the head takes at most 129 examples; using a class-balanced sample of 129 of the 160 "
        "(Sci/Tech 64, Sports 65; seed 0)",
        "tart: note: 2 of 132 texts are longer than the encoder's window of 254 tokens (the longest has "
        f"{_tokens(long)}); each keeps its first 254"]
    predicted = [json.loads(line)["label"] for line in captured.out.splitlines()]
    assert predicted == ["Sports", "Sci/Tech", "Sci/Tech"]


def _tokens(text):
    from tart.embed import minilm_dir
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(minilm_dir())(text, add_special_tokens=False, verbose=False)["input_ids"])


def test_classifier_api_fits_and_predicts_three_classes(ag_news):
    from tart import TartClassifier

    texts = [ag_news[c][i] for i in range(24) for c in range(3)]
    labels = [AG_NEWS_CLASSES[c] for i in range(24) for c in range(3)]
    classifier = TartClassifier().fit(texts, labels)
    assert classifier.classes_ == ("Business", "Sports", "World")
    queries = [ag_news[c][i] for i in range(24, 40) for c in range(3)]
    probs = classifier.predict_proba(queries)
    assert probs.shape == (48, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    expected = [AG_NEWS_CLASSES[c] for i in range(24, 40) for c in range(3)]
    assert np.mean(np.array(classifier.predict(queries)) == np.array(expected)) >= 0.7  # chance: 1/3


def readme_example(repo_root):
    """The Python block after "## Your own data" in tart/README.md."""
    text = (repo_root / "tart" / "README.md").read_text()
    section = text[text.index("## Your own data"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_and_prints_what_it_says(repo_root, data_dir, tmp_path, monkeypatch):
    code = readme_example(repo_root)
    assert len(code.strip().splitlines()) <= 6
    # The file it reads: 64 sentence-level SST-2 reviews, alternating positive and negative.
    source = [json.loads(line) for line in (data_dir / "sst2_sentence_level" / "train.jsonl").open()]
    pos = [r["sentence"] for r in source if r["label"] == 1][:32]
    neg = [r["sentence"] for r in source if r["label"] == 0][:32]
    reviews = [{"text": t, "label": y} for p, n in zip(pos, neg) for t, y in ((p, "positive"), (n, "negative"))]
    write_jsonl(tmp_path / "reviews.jsonl", reviews)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        exec(compile(code, "tart/README.md", "exec"), {})
    promised = re.search(r"print\(.*\)\s*# (.*)", code).group(1)
    assert printed.getvalue().strip() == promised
