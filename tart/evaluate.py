"""`tart eval`: TART against a logistic-regression probe and kNN on the same reduced embeddings.

For each dataset (catalog abbreviations, or the user's file with `--data`) and each k, several
random draws of k class-balanced in-context examples are embedded with a frozen encoder, reduced
to 16 whitened PCA dimensions fitted on those k only, and every method classifies the same
held-out queries; more than two classes run one-vs-rest, reported overall and per class. Results
go to the run directory as `results.json`, `table.md` and `accuracy.png`. `--synthetic` instead
scores the head on held-out synthetic tasks against logistic regression.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import gin
import numpy as np

from symtune.errors import UserError
from tart.methods import PROBES, Scorer, class_probs, knn, probe, tart
from tart.sampling import balanced_draw

USES_GIN = True
SHIPPED_HEAD = Path(__file__).resolve().parent / "assets" / "tart-cpu"
METHODS = ("tart", "probe", "knn", "icl")  # icl: in-context prompting, for decoder encoders only
# Binary TART evaluation sets: catalog names, plus sentence-level SST-2 (not a tuning/eval set).
DEFAULT_DATASETS = ("RT", "SST2S", "TEH", "TEI", "TEO", "SUBJ", "OR", "TC", "TOS")


@gin.configurable
@dataclass(frozen=True)
class TartEvalConfig:
    """What to evaluate on, with which encoder and head, and how many draws."""

    run_dir: str = "runs/tart-eval"
    head: str = str(SHIPPED_HEAD)
    # minilm, st:DIR (sentence-transformers), hf:DIR (any HF PyTorch model), decoder:DIR (ours,
    # imported from a HF directory and sharded; adds the in-context prompting baseline)
    encoder: str = "minilm"
    mode: str = "stream"
    datasets: tuple[str, ...] = DEFAULT_DATASETS
    # The user's own labelled file (JSON Lines or CSV; see tart/userdata.py) instead of `datasets`.
    data: str = ""
    text_field: str = "text"
    label_field: str = "label"
    ks: tuple[int, ...] = (18, 32, 48, 64, 128, 256)  # the TART paper's
    probe: str = "unregularized"  # or "sklearn_default" (see tart/methods.py PROBES)
    draws: int = 5
    queries: int = 300  # held-out examples classified per draw
    pool: int = 1000  # in-context candidates embedded per dataset (stream mode caches them)
    dims: int = 16
    knn_neighbors: int = 5
    seed: int = 0

    def __post_init__(self):
        from tart.embed import MODES

        if self.mode not in MODES:
            raise UserError(f"unknown embedding mode {self.mode!r}; choose from {', '.join(MODES)}")
        if min(self.ks) < 2 or self.draws < 1 or self.queries < 1:
            raise UserError("TartEvalConfig: ks must be >= 2, draws and queries >= 1")
        if self.probe not in PROBES:
            raise UserError(f"unknown probe {self.probe!r}; choose from {', '.join(PROBES)}")


# ---------------------------------------------------------------- synthetic acceptance check


def synthetic_accuracy(head, ks: Sequence[int] = (32, 64, 128), tasks: int = 2000, dims: int = 16,
                       noise_scale: float = 10.0, seed: int = 1234,
                       probe_kind: str = "unregularized") -> dict[int, dict[str, float]]:
    """Query accuracy of the head and of the logistic-regression probe on the same held-out tasks, per k."""
    from tart.head import sequence_probs
    from tart.synthetic import numpy_tasks

    xs, ys = numpy_tasks(np.random.default_rng(seed), tasks, dims, max(ks) + 1, noise_scale)
    score = probe(probe_kind)  # one class seen: predicts it
    out = {}
    for k in ks:
        head_right, lr_right = 0, 0
        for i in range(tasks):
            lr_right += int((score(xs[i, :k], ys[i, :k], xs[i, k:k + 1])[0] >= 0.5) == (ys[i, k] > 0.5))
        for first in range(0, tasks, 250):
            chunk = slice(first, first + 250)
            probs = np.asarray(sequence_probs(head, xs[chunk, :k + 1], ys[chunk, :k + 1]))
            head_right += int(((probs[:, k] >= 0.5) == (ys[chunk, k] > 0.5)).sum())
        out[k] = {"tart": head_right / tasks, "logistic_regression": lr_right / tasks}
    return out


# ---------------------------------------------------------------- real data


def dataset_spec(name: str):
    """A dataset from symtune's catalog (more than two labels run one-vs-rest), or sentence-level
    SST-2 (SST2S)."""
    from symtune.data.catalog import DatasetSpec, get_spec

    if name == "SST2S":
        return DatasetSpec("SST2S", "eval", "sentiment", "sst2_sentence_level", None, "{sentence}", "label",
                           ("negative", "positive"), "", 6920, eval_splits=("validation",))
    return get_spec(name)


@dataclass
class Split:
    """Texts and labels of one dataset: in-context candidates and held-out queries."""

    name: str
    label_names: tuple[str, ...]
    pool_texts: list[str]
    pool_labels: np.ndarray
    query_texts: list[str]
    query_labels: np.ndarray


def load_split(name: str, config: TartEvalConfig, rng: np.random.Generator) -> Split:
    """The dataset's train rows as candidates and eval rows as queries; disjoint halves when the
    dataset has one labelled split (SUBJ's `all`, RAFT's 50 rows)."""
    from symtune.data.sources import load_examples

    spec = dataset_spec(name)
    train = load_examples(spec, spec.train_splits, cap=None)
    test = load_examples(spec, spec.eval_splits, cap=None)
    if train.split == test.split:
        return halves(name, spec.labels, train.texts, train.labels, config, rng)
    q = rng.permutation(len(test))[:config.queries]
    pool_idx = rng.permutation(len(train))[:config.pool]
    return Split(name, spec.labels, [train.texts[i] for i in pool_idx], train.labels[pool_idx],
                 [test.texts[i] for i in q], test.labels[q])


def halves(name: str, label_names: Sequence[str], texts: Sequence[str], labels: np.ndarray,
           config: TartEvalConfig, rng: np.random.Generator) -> Split:
    """One labelled set split at random: up to `config.queries` (at most half) held-out queries,
    up to `config.pool` of the rest as in-context candidates."""
    order = rng.permutation(len(texts))
    n_queries = min(config.queries, len(texts) // 2)
    q, pool_idx = order[:n_queries], rng.permutation(order[n_queries:])[:config.pool]
    return Split(name, tuple(label_names), [texts[i] for i in pool_idx], labels[pool_idx],
                 [texts[i] for i in q], labels[q])


def load_file_split(config: TartEvalConfig, rng: np.random.Generator) -> Split:
    """The user's file (`config.data`) split into queries and candidates like a one-split dataset."""
    from tart.userdata import read_labelled

    data = read_labelled(config.data, config.text_field, config.label_field)
    split = halves(Path(config.data).stem, data.label_names, data.texts, data.labels, config, rng)
    counts = ", ".join(f"{name} {n}" for name, n in zip(data.label_names, np.bincount(data.labels)))
    print(f"{config.data}: {len(data.texts)} rows ({counts}); {len(split.query_texts)} held-out queries, "
          f"{len(split.pool_texts)} in-context candidates", flush=True)
    return split


def stream_embeddings(split: Split, encoder, cache: Path | None, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Stream-mode embeddings of the pool and the queries, read from / written to `cache` (.npz)
    when it holds the same texts under the same encoder `key`."""
    from tart.embed import embed

    digest = hashlib.sha256("\n".join([key, *split.pool_texts, "", *split.query_texts]).encode()).hexdigest()
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        if str(stored["digest"]) == digest:
            return stored["pool"], stored["queries"]
    pool, queries = embed(encoder, split.pool_texts, split.pool_labels, split.query_texts)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, digest=digest, pool=pool, queries=queries)
    return pool, queries


@dataclass
class Scores:
    """One dataset's accuracies, per k and method, one entry per draw."""

    accuracy: dict[int, dict[str, list[float]]]
    # Accuracy on the queries of each class (recall), in label order; nan for a class with no queries.
    per_class: dict[int, dict[str, list[list[float]]]]


def evaluate_dataset(split: Split, encoder, classifiers: dict[str, Scorer], config: TartEvalConfig,
                     rng: np.random.Generator, cache: Path | None = None) -> Scores:
    """Accuracy of each classifier for each k over `config.draws` draws (one-vs-rest past two classes)."""
    from tart.embed import embed, reduce

    num_classes = len(split.label_names)
    cached = None
    if config.mode == "stream":  # an example's embedding does not depend on the others: embed once
        cached = stream_embeddings(split, encoder, cache, config.encoder)
    accuracy: dict[int, dict[str, list[float]]] = {}
    per_class: dict[int, dict[str, list[list[float]]]] = {}
    for k in config.ks:
        predictions: dict[str, list[np.ndarray]] = {m: [] for m in (*classifiers, "icl")}
        for _ in range(config.draws):
            idx = balanced_draw(split.pool_labels, k, rng, num_classes)
            if idx is None:
                break
            if cached is not None:
                train_e, query_e = cached[0][idx], cached[1]
            else:
                train_e, query_e = embed(encoder, [split.pool_texts[i] for i in idx], split.pool_labels[idx],
                                         split.query_texts, config.mode, split.label_names)
            train_x, query_x = reduce(train_e, query_e, config.dims)
            for method, score in classifiers.items():
                probs = class_probs(score, train_x, split.pool_labels[idx], query_x, num_classes)
                if probs is not None:
                    predictions[method].append(np.argmax(probs, 1))
            if hasattr(encoder, "classify_in_context"):
                predictions["icl"].append(encoder.classify_in_context(
                    [split.pool_texts[i] for i in idx], split.pool_labels[idx], split.query_texts, split.label_names))
        scored = {m: p for m, p in predictions.items() if p}
        if scored:
            accuracy[k] = {m: [float(np.mean(p == split.query_labels)) for p in ps] for m, ps in scored.items()}
            per_class[k] = {m: [class_accuracy(p, split.query_labels, num_classes) for p in ps]
                            for m, ps in scored.items()}
    return Scores(accuracy, per_class)


def class_accuracy(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float]:
    """Accuracy on the queries of each class (nan for a class with none)."""
    return [float(np.mean(predicted[labels == c] == c)) if np.any(labels == c) else float("nan")
            for c in range(num_classes)]


def per_class_results(split: Split, scores: Scores) -> dict[str, dict[int, dict[str, list[float]]]]:
    """Per-class accuracies shaped like `Scores.accuracy` under each class name (for `markdown_table`)."""
    return {name: {k: {m: [draw[c] for draw in draws] for m, draws in by_method.items()}
                   for k, by_method in scores.per_class.items()}
            for c, name in enumerate(split.label_names) if np.any(split.query_labels == c)}


def markdown_table(results: dict[str, dict[int, dict[str, list[float]]]], ks: Sequence[int],
                   methods: Sequence[str], rows: str = "dataset") -> str:
    """Mean accuracy (%) per row (dataset, or class) and k, one column per (k, method), plus the
    average over rows."""
    header = f"| {rows} | " + " | ".join(f"k={k} {m}" for k in ks for m in methods) + " |"
    lines = [header, "|---|" + "---:|" * (len(ks) * len(methods))]
    for name, by_k in results.items():
        cells = [f"{100 * np.mean(by_k[k][m]):.1f}" if m in by_k.get(k, {}) else "–" for k in ks for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    averages = []
    for k in ks:
        for m in methods:
            values = [np.mean(by_k[k][m]) for by_k in results.values() if m in by_k.get(k, {})]
            averages.append(f"{100 * np.mean(values):.1f}" if values else "–")
    lines.append("| **average** | " + " | ".join(averages) + " |")
    return "\n".join(lines) + "\n"


def plot(results, ks, methods, path: Path) -> None:
    """Accuracy against k: one panel per dataset and one for the average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results) + ["average"]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for m in methods:
            xs, ys = [], []
            for k in ks:
                values = ([np.mean(results[name][k][m])] if m in results[name].get(k, {}) else []) \
                    if name != "average" else [np.mean(r[k][m]) for r in results.values() if m in r.get(k, {})]
                if values:
                    xs.append(k)
                    ys.append(100 * np.mean(values))
            ax.plot(xs, ys, marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("k")
        ax.set_ylabel("accuracy (%)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_eval(config: TartEvalConfig) -> dict:
    """Evaluates every dataset (or `config.data`) and writes results.json, table.md and accuracy.png."""
    from tart.embed import make_encoder
    from tart.train import load_head

    out = Path(config.run_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    head = load_head(config.head)
    if max(config.ks) + 1 > head.config.max_examples:
        print(f"note: the head takes up to {head.config.max_examples} examples; TART is not scored at "
              f"k >= {head.config.max_examples}")
    rng = np.random.default_rng(config.seed)
    user_split = load_file_split(config, rng) if config.data else None  # file mistakes before the encoder loads
    encoder = make_encoder(config.encoder)
    classifiers = {"tart": tart(head), "probe": probe(config.probe), "knn": knn(config.knn_neighbors)}
    results, per_class = {}, {}
    for name in ([user_split.name] if user_split else config.datasets):
        start = time.time()
        split = user_split or load_split(name, config, rng)
        scores = evaluate_dataset(split, encoder, classifiers, config, rng, cache=out / "embeddings" / f"{name}.npz")
        results[name] = scores.accuracy
        if len(split.label_names) > 2:
            per_class[name] = per_class_results(split, scores)
        summary = ", ".join(f"k={k}: " + " ".join(f"{m} {100 * np.mean(v[m]):.1f}" for m in METHODS if m in v)
                            for k, v in results[name].items())
        print(f"{name}: {summary} [{time.time() - start:.0f}s]", flush=True)
    methods = [m for m in METHODS if any(m in by_k for r in results.values() for by_k in r.values())]
    if not methods:
        raise UserError(f"nothing was scored: a draw of k needs k / (number of classes) in-context candidates of "
                        f"every class, and no k in {config.ks} found them; use smaller ks or more rows")
    table = markdown_table(results, config.ks, methods)
    for name, by_class in per_class.items():
        table += (f"\n{name}, {len(by_class)} classes one-vs-rest: accuracy on each class's queries "
                  f"(average: their mean)\n\n" + markdown_table(by_class, config.ks, methods, rows="class"))
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(
        {"config": dataclasses.asdict(config),
         "accuracy": {n: {str(k): v for k, v in r.items()} for n, r in results.items()},
         "per_class_accuracy": {n: {c: {str(k): v for k, v in r.items()} for c, r in by_class.items()}
                                for n, by_class in per_class.items()}}, indent=2))
    plot(results, config.ks, methods, out / "accuracy.png")
    print(table)
    print(f"tart eval: results in {out}")
    return results


def run_synthetic(config: TartEvalConfig, tasks: int) -> dict:
    from tart.train import load_head

    results = synthetic_accuracy(load_head(config.head), tasks=tasks, probe_kind=config.probe)
    for k, r in results.items():
        print(f"k={k}: TART {100 * r['tart']:.1f}  logistic regression ({config.probe}) "
              f"{100 * r['logistic_regression']:.1f} ({tasks} tasks, d=16)")
    out = Path(config.run_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "synthetic.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run_dir", help="overrides TartEvalConfig.run_dir")
    parser.add_argument("--head", help="overrides TartEvalConfig.head (a head directory)")
    parser.add_argument("--encoder", help="overrides TartEvalConfig.encoder: minilm, st:DIR, hf:DIR or decoder:DIR")
    parser.add_argument("--probe", choices=PROBES, help="overrides TartEvalConfig.probe")
    parser.add_argument("--data", metavar="FILE",
                        help="evaluate on your labelled .jsonl or .csv file instead of the catalog datasets")
    parser.add_argument("--text_field", help="the field holding the text in --data (default: text)")
    parser.add_argument("--label_field", help="the field holding the label in --data (default: label)")
    parser.add_argument("--synthetic", type=int, metavar="TASKS", nargs="?", const=2000,
                        help="score the head on TASKS held-out synthetic tasks against logistic regression")


def run(args: argparse.Namespace) -> int:
    flags = ("run_dir", "head", "encoder", "probe", "data", "text_field", "label_field")
    config = dataclasses.replace(TartEvalConfig(), **{f: getattr(args, f) for f in flags if getattr(args, f)})
    if args.synthetic:
        run_synthetic(config, args.synthetic)
    else:
        run_eval(config)
    return 0
