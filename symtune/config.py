"""gin handling shared by every command: config files, `--gin.NAME=VALUE` overrides, printing."""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import gin

from symtune.errors import UserError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
GIN_PREFIX = "--gin."


def split_gin_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--gin.NAME=VALUE` arguments (returned as `NAME=VALUE`) from the rest."""
    rest, bindings = [], []
    for arg in argv:
        if arg.startswith(GIN_PREFIX):
            binding = arg[len(GIN_PREFIX):]
            if "=" not in binding:
                raise UserError(f"gin override {arg!r} has no value: write {GIN_PREFIX}NAME=VALUE")
            bindings.append(binding)
        else:
            rest.append(arg)
    return rest, bindings


def resolve_gin_file(name: str) -> Path:
    """Finds a gin file as given, else under configs/ (the `.gin` suffix may be left out)."""
    tried = []
    for base in (Path.cwd(), CONFIGS_DIR):
        for candidate in (base / name, base / f"{name}.gin"):
            tried.append(candidate)
            if candidate.is_file():
                return candidate.resolve()
    raise UserError(f"gin file {name!r} not found (looked in {Path.cwd()} and {CONFIGS_DIR})")


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
    """Clears gin and applies the files then the overrides; bad names become a UserError."""
    gin.clear_config()
    gin.add_config_file_search_path(str(CONFIGS_DIR))
    paths = [str(resolve_gin_file(f)) for f in files]
    try:
        with _quiet_include_probes():
            gin.parse_config_files_and_bindings(paths, bindings, finalize_config=False)
    except (ValueError, KeyError, SyntaxError, IOError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"bad gin config: {message}") from None
    check_binding_types()
    check_bound_configs()


def check_binding_types() -> None:
    """A UserError naming the first gin binding whose value is not of its field's annotated type
    (`TrainData.batch_size='eight'`: expected int, got str), before anything runs with it.

    Checks what annotations can say (int, float, bool, str, None, tuples, lists, mappings and
    unions of them); references to other configurables, macros and other types pass through.
    """
    for (scope, selector), bindings in gin.config._CONFIG.items():  # gin has no public iterator
        configurable = gin.config._REGISTRY.get_match(selector)
        if configurable is None:
            continue
        try:
            hints = typing.get_type_hints(configurable.wrapped)
        except Exception:  # an annotation this process cannot resolve: nothing to check against
            continue
        for name, value in bindings.items():
            expected = hints.get(name)
            if expected is not None and not _conforms(value, expected):
                where = f"{scope}/" if scope else ""
                raise UserError(f"gin binding {where}{configurable.name}.{name}={value!r}: expected "
                                f"{_describe(expected)}, got {type(value).__name__}")


def check_bound_configs() -> None:
    """Builds every config dataclass that has gin bindings, so the range checks in their
    `__post_init__` (batch_size >= 1, keep >= 1, ...) fail at start-up, before anything is
    written, as a UserError naming the config rather than deep inside a run."""
    for (scope, selector), bindings in gin.config._CONFIG.items():  # gin has no public iterator
        configurable = gin.config._REGISTRY.get_match(selector)
        if configurable is None or not bindings or not dataclasses.is_dataclass(configurable.wrapped):
            continue
        try:
            with gin.config_scope(scope) if scope else contextlib.nullcontext():
                configurable.wrapped()
        except UserError as e:
            given = ", ".join(f"{name}={value!r}" for name, value in bindings.items())
            where = f"{scope}/" if scope else ""
            raise UserError(f"gin config {where}{configurable.name} ({given}): "
                            f"{str(e).strip().splitlines()[0]}") from None


def _conforms(value: Any, expected: Any) -> bool:
    """Whether a gin value fits an annotation; True where the annotation says nothing checkable."""
    if isinstance(value, gin.config.ConfigurableReference):  # @name and %MACRO: resolved later
        return True
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        element = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else None
        return element is None or all(_conforms(v, element) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True


def _describe(expected: Any) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(expected))
    return "None" if expected is type(None) else getattr(expected, "__name__", str(expected))


def print_config() -> None:
    """Prints the bindings in force (nothing when no gin file or override was given)."""
    text = gin.config_str().strip()
    if text:
        print("# gin config in force\n" + text + "\n", flush=True)


@contextlib.contextmanager
def _quiet_include_probes():
    """gin logs an ERROR for every search-path prefix an `include` misses before it finds the file."""

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found")

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
