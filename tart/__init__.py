"""TART: a task-agnostic reasoning head trained on synthetic logistic regression."""
