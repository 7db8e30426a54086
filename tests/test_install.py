"""The install is complete: every third-party module the package imports is a declared
dependency, and the README's two set-up commands are the ones CI runs.

The walk reads the source (no imports), so it sees every module a command can reach: an
import at module level must be in `install_requires` (what `pip install -e .` installs); an
import inside a function (an optional feature) must be in `install_requires` or a user-facing
extra (`litert`, `convert`, ...). The `test` extra never counts: a module the main job
reaches cannot lean on what only the test command installs.
"""

import ast
import importlib.metadata
import os
import re
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME_FILES = [os.path.join(ROOT, "train.py")]


def setup_requirements(setup_py: str) -> tuple[list[str], dict[str, list[str]]]:
    """(install_requires, extras_require) as written in `setup.py`, read without running it."""
    with open(setup_py, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup":
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords
                      if k.arg in ("install_requires", "extras_require")}
            return kwargs.get("install_requires", []), kwargs.get("extras_require", {})
    raise AssertionError(f"{setup_py}: no setup(...) call")


def distribution_name(requirement: str) -> str:
    """'opencv-python-headless>=4.8' -> 'opencv-python-headless' (PEP 503 normalised)."""
    name = re.match(r"[A-Za-z0-9_.\-]+", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _module_distributions() -> dict[str, set[str]]:
    """Top-level import name -> normalised names of the installed distributions providing it."""
    return {module: {distribution_name(d) for d in dists}
            for module, dists in importlib.metadata.packages_distributions().items()}


def imports_of(path: str) -> list[tuple[str, int, bool]]:
    """(top-level module, line, at module level?) for every absolute import in a file.
    Imports inside `if TYPE_CHECKING:` and relative imports are left out."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name.split(".")[0], child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], child.lineno, top))
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top and not nested)

    visit(tree, True)
    return found


def undeclared_imports(files, install_requires, extras) -> list[str]:
    """'file:line: import X (distribution) ...' for each third-party import of `files` that is
    not declared where it has to be; [] when the install is complete."""
    runtime = {distribution_name(r) for r in install_requires}
    optional = runtime | {distribution_name(r) for name, reqs in extras.items()
                          if name != "test" for r in reqs}
    providers = _module_distributions()
    local = {"gscnn_tf"}
    problems = []
    for path in files:
        for module, line, top in imports_of(path):
            if module in sys.stdlib_module_names or module in local or module == "__future__":
                continue
            dists = providers.get(module, {module.lower()})
            allowed = runtime if top else optional
            if not dists & allowed:
                where = "install_requires" if top else "install_requires or an extra"
                problems.append(f"{os.path.relpath(path, ROOT)}:{line}: import {module} "
                                f"({'/'.join(sorted(dists))}) is not in {where}")
    return problems


def package_files(root: str) -> list[str]:
    return sorted(os.path.join(folder, name) for folder, _, names in os.walk(root)
                  for name in names if name.endswith(".py"))


def test_every_import_of_the_package_is_a_declared_dependency():
    install_requires, extras = setup_requirements(os.path.join(ROOT, "setup.py"))
    files = package_files(os.path.join(ROOT, "gscnn_tf")) + RUNTIME_FILES
    assert len(files) > 30
    assert undeclared_imports(files, install_requires, extras) == []


def test_the_walk_fails_on_a_planted_import(tmp_path):
    """scipy and torch are installed here (test extras), yet the walk must reject them where
    setup.py would not install them."""
    install_requires, extras = setup_requirements(os.path.join(ROOT, "setup.py"))
    planted = tmp_path / "planted.py"
    planted.write_text(textwrap.dedent("""\
        import os
        import numpy as np
        from skimage import measure

        def convert():
            import torch
            import cityscapesscripts
            import skimage.io
    """))
    problems = undeclared_imports([str(planted)], install_requires, extras)
    # torch and cityscapesscripts are extras (`convert`, `cityscapes`) imported inside a
    # function, as optional features are: allowed. scikit-image only comes with the test
    # extra: wrong at module level and inside a function alike.
    assert len(problems) == 2, problems
    assert "planted.py:3: import skimage" in problems[0]
    assert problems[0].endswith("is not in install_requires")
    assert "planted.py:8: import skimage" in problems[1]
    assert problems[1].endswith("is not in install_requires or an extra")
    # ... a dependency that only the test extra brings, imported at module level:
    without_scipy = [r for r in install_requires if distribution_name(r) != "scipy"]
    planted.write_text("from scipy.spatial import cKDTree\n")
    problems = undeclared_imports([str(planted)], without_scipy, extras)
    assert problems == [f"{os.path.relpath(str(planted), ROOT)}:1: import scipy (scipy) is not "
                        "in install_requires"]


def test_scipy_is_a_runtime_dependency_because_metrics_import_it():
    install_requires, _ = setup_requirements(os.path.join(ROOT, "setup.py"))
    uses = [i for i in imports_of(os.path.join(ROOT, "gscnn_tf", "evaluation", "metrics.py"))
            if i[0] == "scipy"]
    assert uses and uses[0][2], "metrics.py imports scipy at module level"
    assert "scipy" in {distribution_name(r) for r in install_requires}


def _bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", markdown, re.S)


def test_ci_runs_the_readme_set_up_commands_literally():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        main_job, tests = [b.strip() for b in _bash_blocks(f.read())[:2]]
    assert main_job == "pip install -e . && python train.py"
    assert tests == 'pip install -e ".[test]" && pytest'
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    main_line = lines.index(main_job)
    test_line = lines.index(tests)
    assert main_line < test_line, ".ci/run runs the main job first"
    assert sum("python3 -m venv" in line for line in lines) >= 2, "each in its own venv"


@pytest.mark.parametrize("name", ["scipy", "cv2", "yaml", "tensorflow", "keras", "numpy"])
def test_runtime_modules_map_to_declared_distributions(name):
    """The walk's module -> distribution map comes from the installed metadata (not a table
    of ours): each runtime module resolves to a declared distribution."""
    install_requires, _ = setup_requirements(os.path.join(ROOT, "setup.py"))
    declared = {distribution_name(r) for r in install_requires}
    assert _module_distributions()[name] & declared
