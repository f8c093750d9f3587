"""TART on your own data: `TartClassifier` (fit on k labelled texts, predict queries) and
`tart predict --examples FILE --queries FILE`, which writes one JSON line per query.

Texts are embedded by a frozen encoder, reduced to the head's input width by PCA + whitening
fitted on the k examples, and classified by the head; more than two classes run one-vs-rest. A
head sees at most `max_examples - 1` examples before a query (129 for the shipped `tart-cpu`
head): from more, `fit` keeps a class-balanced subsample of that many (seeded) and says so with
one `SubsampleWarning`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np

from symtune.errors import UserError
from tart.evaluate import SHIPPED_HEAD
from tart.userdata import InputNote, checked_text, label_ids

USES_GIN = False


class SubsampleWarning(InputNote):
    """There were more examples than the head takes; a class-balanced subsample is used."""


class TartClassifier:
    """TART as a classifier: `fit(texts, labels)` on k examples, then `predict` / `predict_proba`.

    encoder: "minilm", "st:DIR", "hf:DIR", "decoder:DIR" (as `tart eval`) or a `tart.embed.Encoder`;
    head: a head directory (default: the shipped tart-cpu head) or a loaded `TartHead`;
    mode: the embedding mode, "stream" (default), "vanilla" or "loo" (see tart/embed.py).
    """

    def __init__(self, encoder="minilm", head=SHIPPED_HEAD, mode: str = "stream", seed: int = 0):
        from tart.embed import MODES, make_encoder
        from tart.train import load_head

        if mode not in MODES:
            raise UserError(f"unknown embedding mode {mode!r}; choose from {', '.join(MODES)}")
        self.head = load_head(head) if isinstance(head, (str, Path)) else head
        self.encoder = make_encoder(encoder) if isinstance(encoder, str) else encoder
        self.mode, self.seed = mode, seed

    @property
    def max_examples(self) -> int:
        """The most in-context examples the head takes before a query."""
        return self.head.config.max_examples - 1

    def fit(self, texts: Sequence[str], labels: Sequence[Hashable]) -> TartClassifier:
        """Keeps the labelled examples (strings or integers as labels; at least two classes)."""
        from tart.sampling import balanced_subsample

        if len(texts) != len(labels):
            raise UserError(f"{len(texts)} texts but {len(labels)} labels; give one label per text")
        texts = [checked_text(t, f"example {i + 1}") for i, t in enumerate(texts)]
        ids, self.classes_ = label_ids(list(labels))
        if len(texts) > self.max_examples:
            keep = balanced_subsample(ids, self.max_examples, np.random.default_rng(self.seed))
            counts = ", ".join(f"{c} {n}" for c, n in zip(self.classes_, np.bincount(ids[keep])))
            warnings.warn(f"the head takes at most {self.max_examples} examples; using a class-balanced "
                          f"sample of {len(keep)} of the {len(texts)} ({counts}; seed {self.seed})",
                          SubsampleWarning, stacklevel=2)
            texts, ids = [texts[i] for i in keep], ids[keep]
        self.examples_, self.labels_ = texts, ids
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(class) [len(texts), C], one column per class in `classes_` order."""
        from tart.embed import embed, reduce
        from tart.methods import class_probs, tart

        if not hasattr(self, "examples_"):
            raise UserError("call fit(texts, labels) with the labelled examples before predicting")
        texts = [checked_text(t, f"query {i + 1}") for i, t in enumerate(texts)]
        if not texts:
            return np.zeros((0, len(self.classes_)), np.float32)
        train_e, query_e = embed(self.encoder, self.examples_, self.labels_, texts, self.mode,
                                 [str(c) for c in self.classes_])
        train_x, query_x = reduce(train_e, query_e, self.head.config.dims)
        return class_probs(tart(self.head), train_x, self.labels_, query_x, len(self.classes_))

    def predict(self, texts: Sequence[str]) -> list[Hashable]:
        """The likeliest class of each text (label values as given to `fit`)."""
        return [self.classes_[i] for i in np.argmax(self.predict_proba(texts), 1)]


# ---------------------------------------------------------------- `tart predict`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", required=True, metavar="FILE",
                        help="labelled examples, .jsonl or .csv (at least two classes)")
    parser.add_argument("--queries", required=True, metavar="FILE", help="texts to classify, .jsonl or .csv")
    parser.add_argument("--out", metavar="FILE", help="write the JSON lines here (default: stdout)")
    parser.add_argument("--text_field", default="text", help="the field holding the text (default: text)")
    parser.add_argument("--label_field", default="label", help="the field holding the label (default: label)")
    parser.add_argument("--head", default=str(SHIPPED_HEAD), help="a head directory (default: the shipped tart-cpu)")
    parser.add_argument("--encoder", default="minilm", help="minilm, st:DIR, hf:DIR or decoder:DIR (default: minilm)")
    parser.add_argument("--mode", default="stream", help="embedding mode: stream, vanilla or loo (default: stream)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the subsample when there are too many examples")


def run(args: argparse.Namespace) -> int:
    from tart.userdata import read_labelled, read_texts

    examples = read_labelled(args.examples, args.text_field, args.label_field)
    queries = read_texts(args.queries, args.text_field)
    out_path = Path(args.out) if args.out else None
    if out_path is not None and not out_path.parent.is_dir():
        raise UserError(f"--out {out_path}: no directory {out_path.parent}")
    classifier = TartClassifier(args.encoder, args.head, args.mode, args.seed)
    classifier.fit(examples.texts, [examples.classes[i] for i in examples.labels])
    probs = classifier.predict_proba(queries)
    lines = [json.dumps({"label": classifier.classes_[i], "probability": round(float(p[i]), 6)})
             for p, i in zip(probs, np.argmax(probs, 1))]
    text = "".join(line + "\n" for line in lines)
    if out_path is None:
        sys.stdout.write(text)
    else:
        out_path.write_text(text)
        print(f"tart predict: {len(lines)} predictions in {out_path}", file=sys.stderr)
    return 0
