"""`tart <command>`: TART's commands, on the same CLI machinery as `symtune`."""

from __future__ import annotations

import sys
from typing import Sequence

from symtune.cli import Command, run_cli

TART_COMMANDS: tuple[Command, ...] = ()


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "tart",
        "TART: train a reasoning head on synthetic logistic regression and evaluate it on top of "
        "any frozen model's embeddings.",
        TART_COMMANDS,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
