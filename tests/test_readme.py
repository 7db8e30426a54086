"""The README is tested documentation: every command and Python block of `README.md` and
`export/README.md` runs as written on the synthetic data.

A command that needs what the repository cannot bring (the Cityscapes dataset, Docker and
the TF Serving image, a download) carries a `# needs ...` comment beside it and is not run;
every other command is. Files a user would bring (`street.png`, `images/`) are made from the
synthetic dataset. Commands find `gscnn-tf` beside this interpreter, as an activated venv
would.

The default suite checks that each `gscnn-tf` command line in the docs parses with today's
options and that the Python blocks compile; `pytest -m slow` runs everything, in order, in
a copy of the repository (about 15 minutes on 2 cores).
"""

import argparse
import glob
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", os.path.join("export", "README.md")]
NEEDS = re.compile(r"#\s*needs\b")


def blocks(path: str) -> list[tuple[str, str]]:
    """(language, text) of each fenced block of a markdown file, in order."""
    with open(path, encoding="utf-8") as f:
        return re.findall(r"^```(\w*)\n(.*?)^```", f.read(), re.S | re.M)


def shell_commands(text: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comment-only lines left out
    (a command's trailing comment stays, so `# needs` travels with it)."""
    commands, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1].strip() + " "
            continue
        commands.append(current + line.strip())
        current = ""
    return commands


def needs(command: str) -> str | None:
    """What a command needs beyond this repository (its `# needs ...` comment), or None."""
    match = NEEDS.search(command)
    return command[match.start():].lstrip("# ").strip() if match else None


def doc_commands() -> list[tuple[str, str]]:
    return [(doc, command) for doc in DOCS for lang, text in blocks(os.path.join(ROOT, doc))
            if lang == "bash" for command in shell_commands(text)]


def python_blocks() -> list[tuple[str, str]]:
    return [(doc, text) for doc in DOCS for lang, text in blocks(os.path.join(ROOT, doc))
            if lang == "python"]


def _arguments(command: str) -> list[str]:
    return shlex.split(command.split(" #")[0], comments=False)


def test_the_docs_have_commands_and_python_blocks():
    commands = doc_commands()
    assert len(commands) > 15 and len(python_blocks()) >= 2
    assert ("README.md", "pip install -e . && python train.py") in commands
    marked = [c for _, c in commands if needs(c)]
    assert any("Docker" in needs(c) for c in marked)
    assert any("Cityscapes" in needs(c) for c in marked)


def test_shell_commands_parse_continuations_and_needs():
    text = ("# a comment line\n"
            "gscnn-tf evaluate model.keras --flip \\\n"
            "    --scales 1 --save-predictions p/   # needs Cityscapes\n"
            "python train.py\n")
    commands = shell_commands(text)
    assert commands == ["gscnn-tf evaluate model.keras --flip --scales 1 "
                        "--save-predictions p/   # needs Cityscapes", "python train.py"]
    assert needs(commands[0]) == "needs Cityscapes" and needs(commands[1]) is None


@pytest.mark.parametrize("doc, command", [c for c in doc_commands()
                                          if c[1].startswith(("gscnn-tf ", "python train.py"))])
def test_documented_gscnn_tf_commands_parse(doc, command):
    """Every `gscnn-tf` / `python train.py` line of the docs names a command that exists and
    options it accepts (argparse exits with 2 on an unknown option)."""
    from gscnn_tf import cli

    argv = _arguments(command)
    argv = ["train", *argv[2:]] if argv[:2] == ["python", "train.py"] else argv[1:]
    assert argv[0] in cli.COMMANDS, f"{doc}: unknown command in: {command}"
    module = importlib.import_module(cli.COMMANDS[argv[0]][0])
    parser = argparse.ArgumentParser(prog=f"gscnn-tf {argv[0]}", exit_on_error=False)
    module.add_arguments(parser)
    parser.parse_args(argv[1:])


@pytest.mark.parametrize("doc, text", python_blocks())
def test_python_blocks_compile(doc, text):
    compile(text, doc, "exec")


def _workdir(tmp_path) -> str:
    """A copy of the repository's tracked files (no runs/, data/ or exports/)."""
    work = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(work / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), work / name)
    return str(work)


def _user_files(work: str) -> None:
    """street.png and images/ as a user would bring them: synthetic validation images, made
    as soon as the main job has generated the dataset."""
    images = sorted(glob.glob(os.path.join(work, "data", "synthetic", "images", "val", "*")))
    if not images or os.path.exists(os.path.join(work, "street.png")):
        return
    shutil.copy(images[0], os.path.join(work, "street.png"))
    os.makedirs(os.path.join(work, "images"), exist_ok=True)
    for path in images[:3]:
        shutil.copy(path, os.path.join(work, "images"))


def _run(command: str, work: str, env: dict, timeout: int = 1800):
    return subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_every_command_and_python_block_runs_as_written(tmp_path):
    """README.md first (its main job trains runs/synthetic), then export/README.md in a fresh
    copy that has that run and the data, as a user who read the README first."""
    bin_dir = os.path.dirname(sys.executable)
    ran, first = [], None
    for i, doc in enumerate(DOCS):
        work = _workdir(tmp_path / f"doc{i}")
        if first is not None:
            for name in ("runs", "data", "images", "street.png"):
                copy = shutil.copytree if os.path.isdir(os.path.join(first, name)) else \
                    shutil.copy
                copy(os.path.join(first, name), os.path.join(work, name))
        env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
                   PYTHONPATH=work)
        for lang, text in blocks(os.path.join(ROOT, doc)):
            if lang == "python":
                commands = [f"python - <<'PYTHON'\n{text}PYTHON"]
            elif lang == "bash":
                commands = [c for c in shell_commands(text) if not needs(c)]
            else:
                continue
            for command in commands:
                if command.startswith("pip install"):
                    continue  # the set-up commands: CI runs them in fresh venvs (.ci/run)
                result = _run(command, work, env)
                assert result.returncode == 0, (
                    f"{doc}: `{command}` exited {result.returncode}:\n"
                    f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
                assert "Traceback" not in result.stderr, f"{doc}: `{command}`"
                ran.append(command)
                _user_files(work)
        if first is None:
            first = work
            assert os.path.isdir(os.path.join(work, "runs", "synthetic", "pictures"))
            assert os.path.isdir(os.path.join(work, "runs", "synthetic-2"))  # a second run
    assert len(ran) > 10
