"""The benchmark scripts, each run as `python -m benchmarks.NAME` from the repository root
(benchmarks/README.md lists them and the figures they measured), and their shared options."""

import argparse
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def argument_parser(doc: str, name: str | None) -> argparse.ArgumentParser:
    """A parser described by `doc`'s first paragraph, with --out (the results folder,
    benchmarks/results) and, where `name` is given, --name (the results files' name)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", default=RESULTS, help="results folder")
    if name is not None:
        parser.add_argument("--name", default=name, help="results files' name (NAME.json, .md)")
    return parser
