"""Every documentation path that the code, the configs, the READMEs, docs/ and the committed
benchmark results cite exists in the repository, and every `#anchor` of such a citation names
a heading of the cited page.

Checked in each scanned file:
- paths with a folder that end in `.md` (`docs/evaluation.md`, `benchmarks/results/canny.md`,
  `../export/README.md`, optionally with `#anchor`), resolved against the repository root or
  the citing file's folder; absolute paths are never in the repository;
- bare upper-case page names such as `README.md`: the same resolution;
- in markdown files, every relative link or image target `[text](target)`.
Lower-case bare names (`metrics.md`, `ablation.md`) are files that commands write, not
citations, and are not checked; nor are paths under folders that commands create (`runs/`...).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folders that commands create at run time: a path under them names an output, not a page.
GENERATED = ("runs/", "exports/", "data/", "predictions/", "preds/", "out/")
_PATH = re.compile(r"(?<![\w./<>{}*-])(/?(?:\.\.?/)*(?:[\w.-]+/)+[\w.-]*[\w-]\.md)(#[\w-]+)?")
_BARE = re.compile(r"(?<![\w./<>{}*-])([A-Z][A-Z0-9_]*\.md)(#[\w-]+)?\b")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def scanned_files() -> list[Path]:
    """The files whose citations must resolve."""
    files = [*ROOT.glob("gscnn_tf/**/*.py"), *ROOT.glob("configs/*.yaml"),
             *ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/*.py"),
             ROOT / "benchmarks" / "README.md", *ROOT.glob("benchmarks/results/**/*.md"),
             *ROOT.glob("docs/*.md"),
             ROOT / "README.md", ROOT / "setup.py"]
    files += [p for p in ROOT.glob("export/**/*")
              if p.is_file() and "__pycache__" not in p.parts]
    return sorted(p for p in set(files) if p.is_file())


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of the markdown headings of `page`."""
    anchors = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def _problem(target: str, anchor: str, source: Path) -> str | None:
    """Why `target` (+ `anchor`, '' or '#name') cited from `source` does not resolve."""
    if target.startswith("/"):
        return f"{target}: an absolute path, not a file of the repository"
    candidates = [ROOT / target, source.parent / target]
    found = next((p.resolve() for p in candidates if p.exists()), None)
    if found is None or ROOT not in (found, *found.parents):
        return f"{target}: no such file in the repository"
    if anchor and found.suffix == ".md" and anchor[1:] not in heading_anchors(found):
        return f"{target}{anchor}: {found.relative_to(ROOT)} has no heading '{anchor[1:]}'"
    return None


def bad_citations(text: str, source: Path) -> list[str]:
    """`line N: reason` for every citation in `text` (the contents of `source`, a path inside
    the repository) that does not resolve to a file of the repository."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        cited = [(m.group(1), m.group(2) or "") for m in _PATH.finditer(line)]
        cited += [(m.group(1), m.group(2) or "") for m in _BARE.finditer(line)]
        if source.suffix == ".md":
            for m in _LINK.finditer(line):
                target = m.group(1)
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                cited.append((path or source.name, f"#{anchor}" if anchor else ""))
        for target, anchor in cited:
            if target.startswith(GENERATED):
                continue
            problem = _problem(target, anchor, source)
            if problem:
                problems.append(f"line {number}: {problem}")
    return sorted(set(problems))


def test_every_cited_doc_exists():
    problems = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        problems += [f"{path.relative_to(ROOT)} {p}" for p in bad_citations(text, path)]
    assert not problems, "citations of files that are not in the repository:\n" + "\n".join(
        problems)


def test_the_scan_covers_code_configs_and_docs():
    names = {str(p.relative_to(ROOT)) for p in scanned_files()}
    for expected in ("README.md", "docs/README.md", "docs/method.md", "gscnn_tf/losses.py",
                     "configs/cityscapes_wrn38.yaml", "benchmarks/speed.py",
                     "export/README.md", "tests/test_docs.py", "benchmarks/results/speed.md"):
        assert expected in names, expected


# Planted citations, spelled in pieces so that this file itself stays clean.
_MD = ".md"


@pytest.mark.parametrize("text, source, expected", [
    (f"(REFERENCE{_MD} section 6)", "gscnn_tf/losses.py", f"REFERENCE{_MD}: no such file"),
    (f"rules in docs CANNY{_MD}", "gscnn_tf/export/tflite.py", f"CANNY{_MD}: no such file"),
    (f"measured in `docs/CANNY{_MD}`", "gscnn_tf/ops/canny.py",
     f"docs/CANNY{_MD}: no such file"),
    (f"# the recipe (docs/recipe{_MD})", "configs/x.yaml", f"docs/recipe{_MD}: no such file"),
    (f"see `benchmarks/results/nothing{_MD}`", "README.md",
     f"benchmarks/results/nothing{_MD}: no such file"),
    (f"the [protocol](evaluation{_MD}#no-such-heading)", "docs/method.md",
     f"evaluation{_MD}#no-such-heading: docs/evaluation.md has no heading"),
    ("![plot](results/missing.png)", "benchmarks/README.md", "results/missing.png: no such"),
    (f"facts in /somewhere/else/PORTING{_MD}", "tests/reference_torch.py", "absolute path"),
    (f"see ../../outside/NOTES{_MD}", "docs/method.md", "no such file in the repository"),
])
def test_checker_catches_a_planted_bad_citation(text, source, expected):
    problems = bad_citations(text, ROOT / source)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize("text, source", [
    (f"see `docs/evaluation{_MD}` and docs/evaluation{_MD}#boundary-f-score", "gscnn_tf/a.py"),
    (f"[protocol](evaluation{_MD}#tolerances-scale-with-the-image-height)", "docs/method.md"),
    (f"[bench](../benchmarks/README{_MD}) and ![plot](results/ablation.png)",
     "benchmarks/README.md"),
    (f"long_description=open(\"README{_MD}\")", "setup.py"),
    (f"writes metrics{_MD} and runs/x/eval_val/metrics{_MD}", "gscnn_tf/evaluation/cli.py"),
    ("[site](https://example.org/a/README.md)", "docs/README.md"),
])
def test_checker_accepts_good_citations(text, source):
    assert bad_citations(text, ROOT / source) == []
