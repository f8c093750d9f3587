"""The classifiers TART is compared with, on the same reduced features, as scorers.

A `Scorer` maps k binary-labelled examples (train_x [k, d], train_y [k] in {0, 1}) and queries
test_x [T, d] to P(y = 1) of each query, or None when it cannot score them (TART past its head's
length). `class_probs` runs any scorer over C classes: directly for two, one-vs-rest for more (as
the TART paper does for AG News and DBPedia).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from symtune.errors import UserError

Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], "np.ndarray | None"]

# unregularized: the TART code's probe (its eval/reasoning_utils.py): LogisticRegression with no
#   penalty, no intercept (the features are centred on the k examples), lbfgs, tol 1e-5, and
#   scikit-learn's default 100 iterations.
# sklearn_default: LogisticRegression() (L2 penalty, C = 1, intercept), what this repo used before.
PROBES = ("unregularized", "sklearn_default")


def logistic_regression(kind: str = "unregularized"):
    """An unfitted scikit-learn LogisticRegression of the named kind (see PROBES)."""
    from sklearn.linear_model import LogisticRegression

    if kind == "unregularized":
        # C = inf is scikit-learn's spelling of "no penalty" from 1.8 on (penalty=None is deprecated).
        return LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-5)
    if kind == "sklearn_default":
        return LogisticRegression(max_iter=1000)
    raise UserError(f"unknown probe {kind!r}; choose from {', '.join(PROBES)}")


def probe(kind: str = "unregularized") -> Scorer:
    """Logistic regression fitted on the k examples (a constant when they have one class)."""
    logistic_regression(kind)  # an unknown kind fails here, not at the first fit

    def score(train_x, train_y, test_x):
        from sklearn.exceptions import ConvergenceWarning

        if len(np.unique(train_y)) < 2:
            return np.full(len(test_x), float(train_y[0]))
        with warnings.catch_warnings():
            # Without a penalty, separable examples (any k <= d + 1) never converge: expected.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = logistic_regression(kind).fit(train_x, train_y)
        return model.predict_proba(test_x)[:, 1]

    return score


def knn(neighbors: int) -> Scorer:
    """The share of class 1 among the nearest `neighbors` examples."""

    def score(train_x, train_y, test_x):
        from sklearn.neighbors import KNeighborsClassifier

        if len(np.unique(train_y)) < 2:
            return np.full(len(test_x), float(train_y[0]))
        model = KNeighborsClassifier(min(neighbors, len(train_x))).fit(train_x, train_y)
        return model.predict_proba(test_x)[:, 1]

    return score


def tart(head) -> Scorer:
    """The head at the query position; None (not scored) when k examples + query exceed its length."""
    from tart.head import predict_queries

    def score(train_x, train_y, test_x):
        if len(train_x) + 1 > head.config.max_examples:
            return None
        return predict_queries(head, train_x, train_y, test_x)

    return score


def class_probs(score: Scorer, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                num_classes: int) -> np.ndarray | None:
    """P(class) [T, C] of each query: (1 - p, p) for two classes; for more, one scorer per class
    against the rest on the same examples, normalised to sum to 1. None when `score` declines."""
    if num_classes == 2:
        p = score(train_x, train_y, test_x)
        return None if p is None else np.stack([1 - p, p], 1)
    columns = []
    for c in range(num_classes):
        p = score(train_x, (train_y == c).astype(np.int64), test_x)
        if p is None:
            return None
        columns.append(p)
    probs = np.stack(columns, 1)
    total = probs.sum(1, keepdims=True)
    return np.where(total > 0, probs / np.where(total > 0, total, 1), 1.0 / num_classes)
