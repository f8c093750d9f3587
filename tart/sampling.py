"""Which labelled examples go in context: exactly class-balanced draws (evaluation) and
as-balanced-as-the-data-allows subsamples (more examples than a head takes)."""

from __future__ import annotations

import numpy as np


def balanced_draw(labels: np.ndarray, k: int, rng: np.random.Generator, num_classes: int = 2) -> np.ndarray | None:
    """k indices in random order, k // C of each class (the last k % C classes one more); None when
    a class has too few rows or k < C."""
    sizes = [k // num_classes + (c >= num_classes - k % num_classes) for c in range(num_classes)]
    per_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    if any(n == 0 or len(idx) < n for idx, n in zip(per_class, sizes)):
        return None
    return _draw(per_class, sizes, rng)


def balanced_subsample(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k of the rows (all of them when there are no more than k), the classes as even as their
    sizes allow: a class with fewer than its share gives all its rows and the rest share the remainder."""
    classes, counts = np.unique(labels, return_counts=True)
    if counts.sum() <= k:
        return np.arange(len(labels))
    sizes = np.zeros(len(classes), np.int64)
    left = k
    for rank, c in enumerate(np.argsort(counts, kind="stable")):  # smallest class first
        sizes[c] = min(counts[c], left // (len(classes) - rank))
        left -= sizes[c]
    return _draw([np.flatnonzero(labels == c) for c in classes], sizes, rng)


def _draw(per_class: list[np.ndarray], sizes, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.concatenate([rng.choice(idx, n, replace=False) for idx, n in zip(per_class, sizes)]))
