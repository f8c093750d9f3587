"""`symtune compare BASE NEW`: two evaluation runs side by side, NEW's deltas against BASE."""

from __future__ import annotations

import argparse

USES_GIN = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", help="eval.json (or the `symtune eval` output dir) of the reference run")
    parser.add_argument("new", help="eval.json (or output dir) of the model to compare, e.g. after tuning")
    parser.add_argument("--out", help="also write compare.md and compare.png to this directory")


def run(args: argparse.Namespace) -> int:
    from etils import epath

    from symtune.eval.report import compare_markdown, plot_averages, read_summary

    base, new = read_summary(args.base), read_summary(args.new)
    text = compare_markdown(base, new)
    print(text)
    if args.out:
        out = epath.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text)
        print(f"written: {out / 'compare.md'}, {plot_averages([base, new], out / 'compare.png')}")
    return 0
