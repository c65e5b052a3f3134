"""The layout rules of the repository that a test can hold (issue: a newcomer's first hour)."""

import re

from helpers import PKG, ROOT


def test_no_test_module_imports_conftest():
    # conftest.py holds fixtures only; shared helpers live in tests/helpers.py
    offenders = [p.name for p in (ROOT / "tests").rglob("*.py")
                 if re.search(r"^\s*(from conftest import|import conftest)", p.read_text(), re.M)]
    assert offenders == []


def test_tools_live_apart_from_the_library():
    # the bench, the demo, info, the subscribe CLI and the vLLM bench are tools, not the index
    top = {p.stem for p in PKG.glob("*.py")}
    assert not top & {"_bench", "_demo", "_info", "_vllm_bench", "vllm"}
    assert {"bench", "demo", "info", "subscribe", "vllm_bench", "snapshot_info"} <= \
        {p.stem for p in (PKG / "_tools").iterdir()}


def test_the_version_is_written_once():
    hits = [p for p in list(PKG.rglob("*.py")) + [ROOT / "pyproject.toml", ROOT / "setup.py"]
            if re.search(r"""^\s*(__version__|version)\s*=\s*["']\d""", p.read_text(), re.M)]
    assert [p.name for p in hits] == ["_version.py"]
