"""`symtune <command>`: one entry point; gin handling and error reporting shared by all commands.

Each command lives in its own module exposing `USES_GIN`, `add_arguments(parser)` and
`run(args) -> int`; modules are imported only when their command runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Sequence

from symtune.errors import UserError


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    help: str


SYMTUNE_COMMANDS = (
    Command("demo", "symtune.demo", "run the main job end to end on local defaults (CPU)"),
    Command("train", "symtune.train.run", "train (or resume) a decoder on the symbol-tuning mixture"),
    Command("data", "symtune.data.commands", "export datasets to a local copy; inspect rendered tasks"),
    Command("eval", "symtune.eval.eval_command", "evaluate a checkpoint or HF model in context; write reports"),
    Command("compare", "symtune.eval.compare_command", "compare two evaluation runs, printing the deltas"),
    Command("plan", "symtune.plan", "size a run for a TPU slice or GPU cluster: memory, time, a mesh that fits"),
    Command("export", "symtune.eval.export_command", "export a checkpoint as an HF model directory + bf16 params"),
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad invocation as one line and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_gin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gin_file", action="append", default=[], metavar="FILE",
        help="gin config file (repeatable); looked up as given, then under configs/",
    )
    parser.epilog = "Any --gin.NAME=VALUE argument overrides one gin binding."


def build_top_parser(prog: str, description: str, commands: Sequence[Command]) -> argparse.ArgumentParser:
    """The parser that lists the commands; each command's own parser is built when it runs."""
    parser = _Parser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands:
        sub.add_parser(command.name, help=command.help)
    return parser


def run_cli(prog: str, description: str, commands: Sequence[Command], argv: Sequence[str] | None) -> int:
    """Parses argv, applies gin, runs the command; user mistakes are one line on stderr, exit 2."""
    from symtune.config import parse_gin, print_config, split_gin_overrides
    from symtune.hostenv import (HostConfig, apply_host_config, quiet_console, quiet_tensorflow,
                                 retain_freed_memory, runs_on_cpu_only)

    if argv is None:  # a process of its own (not a library caller's): its stderr is the CLI's to filter
        quiet_console()
    quiet_tensorflow()  # before any command module imports TensorFlow
    if runs_on_cpu_only():
        # No TPU or GPU here: JAX skips the installed TPU/CUDA plugins' failing start-up probes.
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        retain_freed_memory()  # before TensorFlow or XLA start their threads

    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_top_parser(prog, description, commands)
    by_name = {c.name: c for c in commands}
    try:
        rest, bindings = split_gin_overrides(argv)
        if not rest or rest[0].startswith("-"):
            top.parse_args(rest)  # prints --help / --version, or reports the mistake
            top.error("a command is required")
        command = by_name.get(rest[0])
        if command is None:
            top.error(f"unknown command {rest[0]!r}; choose from {', '.join(by_name)}")
        module = importlib.import_module(command.module)
        parser = _Parser(prog=f"{prog} {command.name}", description=command.help)
        if module.USES_GIN:
            add_gin_arguments(parser)
        module.add_arguments(parser)
        args = parser.parse_args(rest[1:])
        if module.USES_GIN:
            parse_gin(args.gin_file, bindings)
            print_config()
        elif bindings:
            raise UserError(f"`{prog} {command.name}` takes no gin configuration")
        apply_host_config(HostConfig())
        code = int(module.run(args) or 0)
        distributed = sys.modules.get("symtune.train.distributed")  # loaded by commands that join a job
        if code == 0 and distributed:
            distributed.finished()
        return code
    except UserError as e:
        # First line only: gin appends "In call to configurable ..." to errors raised in configurables.
        print(f"{prog}: error: {str(e).strip().splitlines()[0] if str(e).strip() else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # In a multi-process run a lost process surfaces here as a collective's error: let the
        # watcher name it (and exit) rather than print that error's traceback.
        distributed = sys.modules.get("symtune.train.distributed")
        if distributed:
            distributed.await_lost_process(e)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "symtune",
        "Symbol tuning for in-context learning: data, training, evaluation and export on JAX.",
        SYMTUNE_COMMANDS,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
