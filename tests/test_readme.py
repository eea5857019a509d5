"""The README's commands are what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The one-line commands of the README's ```bash blocks that create a fresh venv."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for block in blocks for line in block.splitlines()
            if line.startswith("python3 -m venv")]


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = [c for c in readme_commands() if c.endswith("python -m pytest")]
    assert len(test_command) == 1, "README gives exactly one test command"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = ci.index("# README_TEST_COMMAND (tests/test_readme.py checks it is the README's, "
                      "character for character)")
    assert ci[marker + 1] == test_command[0]


def test_the_example_plugin_is_installed_after_the_package():
    """pip 23.2 (a fresh Python 3.11 venv's) cannot resolve the plugin's dependency on
    gasnet-plugin when both are local paths in one install command."""
    for command in readme_commands():
        for step in command.split("&&"):
            if "example_engine_plugin" in step:
                assert "-e ." not in step


def test_docs_install_lines_are_the_readme_commands():
    usage = (ROOT / "docs" / "usage.rst").read_text()
    commands = readme_commands()
    assert len(commands) == 3                     # run, test, docs
    for command in commands:
        assert f"    {command}\n" in usage
    docs = [c for c in commands if "sphinx-build" in c]
    assert docs and '".[docs]"' in docs[0]
