"""README.md's usage example runs as written (on whichever backend this run uses)."""

import re
import subprocess
import sys

from helpers import ROOT


def test_readme_usage_example_runs():
    text = (ROOT / "README.md").read_text()
    example = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S)
    assert example, "README.md has no Usage example"
    proc = subprocess.run([sys.executable, "-c", example.group(1)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "'blocks_stored': 4" in proc.stdout  # its closing stats() line: 3 blocks, then a batch's 1


def test_readme_starts_with_the_two_commands_ci_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)\n```", text, re.S)
    assert blocks[0] == "python -m pip install -e . --config-settings editable_mode=compat && python -m prefixindex demo"
    assert blocks[1].startswith("python -m pip install -e '.[test]' --config-settings editable_mode=compat && "
                                "python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "eval \"$demo_command\"" in ci and "eval \"$test_command\"" in ci
