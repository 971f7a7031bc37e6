"""The README's Python example runs as written, and its commands exist."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_readme_cli_commands_are_real_subcommands():
    from eoslab.cli import COMMANDS

    cmds = re.findall(r"^eoslab (\w+)", README.read_text(), flags=re.M)
    assert cmds and set(cmds) <= set(COMMANDS)
    text = README.read_text()
    assert "make demo" in text and "make test" in text
