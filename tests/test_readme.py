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


# The short examples a user copies first: each must run as written, in a fresh interpreter (one of
# each page's first python block; they used names that no line defined, found by a docs review).
SHORT_EXAMPLES = [("README.md", "## Routing"), ("docs/routing.md", "# Routing: choosing a pod"),
                  ("docs/snapshot.md", "# Snapshots"), ("docs/metrics.md", "## Use")]


def test_the_short_examples_run_as_written(tmp_path):
    import pytest

    for page, heading in SHORT_EXAMPLES:
        text = (ROOT / page).read_text()
        at = text.find(heading)
        assert at >= 0, f"{page} has no {heading!r}"
        example = re.search(r"```python\n(.*?)```", text[at:], re.S)
        assert example, f"{page}: no python example after {heading!r}"
        code = example.group(1)
        if page == "docs/metrics.md":
            pytest.importorskip("prometheus_client")
            code = code.replace("metrics.serve(9400,", "metrics.serve(0,")  # any free port
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert proc.returncode == 0, f"{page}, the example after {heading!r}:\n{proc.stderr}"
