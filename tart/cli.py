"""`tart <command>`: TART's commands, on the same CLI machinery as `symtune`."""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Iterator, Sequence

from symtune.cli import Command, run_cli

TART_COMMANDS: tuple[Command, ...] = (
    Command("train", "tart.train", "train the reasoning head on synthetic logistic regression"),
    Command("eval", "tart.evaluate", "TART vs a linear probe and kNN on frozen embeddings, against k"),
    Command("predict", "tart.predict", "classify your texts with TART from your labelled examples"),
    Command("import", "tart.convert", "convert the released PyTorch TART head into a head directory"),
)


@contextlib.contextmanager
def one_line_warnings(prog: str) -> Iterator[None]:
    """tart's notes about the user's input (`InputNote`: truncated texts, a subsample) as one
    `prog: note: ...` line each on stderr; other warnings as usual."""
    from tart.userdata import InputNote

    with warnings.catch_warnings():
        usual = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, InputNote):
                print(f"{prog}: note: {message}", file=sys.stderr, flush=True)
            else:
                usual(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    with one_line_warnings("tart"):
        return run_cli(
            "tart",
            "TART: train a reasoning head on synthetic logistic regression and evaluate it on top of "
            "any frozen model's embeddings.",
            TART_COMMANDS,
            argv,
        )


if __name__ == "__main__":
    sys.exit(main())
