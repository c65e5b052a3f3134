"""The docs stand alone: README.md and docs/*.md link only to files (and headings) that exist in the
repository or to public URLs, never to files outside it; docs/spec.md's test vectors and configuration
table are what the code does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from prefixindex import Config
from prefixindex._config import ENV_VARS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
DOC_IDS = [str(p.relative_to(ROOT)) for p in DOCS]

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`[^`]*`")


def prose_lines(path: Path, strip_code: bool = True) -> List[Tuple[int, str]]:
    """(line number, text) outside fenced code blocks, with inline code removed unless told."""
    out, fenced = [], False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, _INLINE_CODE.sub("", line) if strip_code else line))
    return out


def links(path: Path) -> List[Tuple[int, str]]:
    return [(n, m.group(1)) for n, line in prose_lines(path) for m in _LINK.finditer(line)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    seen: Dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path, strip_code=False):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            k = seen.get(base, 0)
            seen[base] = k + 1
            out.add(base if k == 0 else f"{base}-{k}")
    return out


def test_the_link_parser_sees_links_anchors_and_skips_code(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("# A title, with `code`!\n[one](a.md) ![img](p.png) `[not](b.md)`\n```\n[no](c.md)\n# no\n```\n"
                   "## A title, with code\n[two](<d.md#x> \"t\")\n")
    assert [t for _, t in links(doc)] == ["a.md", "p.png", "d.md#x"]
    assert anchors(doc) == {"a-title-with-code", "a-title-with-code-1"}


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_relative_link_resolves(doc):
    found = links(doc)
    problems = []
    for n, target in found:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # a URL
            if not re.match(r"^(https?|mailto):", target):
                problems.append(f"{doc.name}:{n}: {target}: only public http(s) URLs")
            elif re.match(r"^https?://(localhost|127\.|10\.|192\.168\.)", target):
                problems.append(f"{doc.name}:{n}: {target}: not a public URL")
            continue
        path_part, _, anchor = target.partition("#")
        if path_part.startswith("/"):
            problems.append(f"{doc.name}:{n}: {target}: an absolute path")
            continue
        dest = (doc.parent / path_part).resolve() if path_part else doc.resolve()
        if not dest.is_relative_to(ROOT):
            problems.append(f"{doc.name}:{n}: {target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{doc.name}:{n}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{doc.name}:{n}: {target}: no heading #{anchor} in {dest.name}")
    assert not problems, "\n".join(problems)


def test_the_docs_link_to_each_other():
    """README lists every page of docs/, so that none is an orphan."""
    readme_targets = {t.partition("#")[0] for _, t in links(ROOT / "README.md")}
    for page in DOCS[1:]:
        assert f"docs/{page.name}" in readme_targets, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_no_doc_points_outside_the_repository(doc):
    text = doc.read_text(encoding="utf-8")
    for needle in ("../shared", "/work/shared", "/work/"):
        assert needle not in text, f"{doc.name} mentions {needle}"



def test_no_source_file_points_outside_the_repository():
    """Code, tests and tools cite the project's docs too, never a reference file outside the checkout."""
    sources = [ROOT / "setup.py", ROOT / "pyproject.toml", ROOT / ".ci" / "run"]
    for folder, pattern in (("prefixindex", "*.py*"), ("prefixindex", "*.h"), ("prefixindex", "*.pxd"),
                            ("tests", "*.py"), ("asv_benchmarks", "*.py")):
        sources += sorted((ROOT / folder).rglob(pattern))
    this = Path(__file__).resolve()
    offenders = [f"{path.relative_to(ROOT)} mentions {needle}" for path in sources
                 if path.is_file() and path.resolve() != this
                 for needle in ("../shared", "/work/shared")
                 if needle in path.read_text(encoding="utf-8", errors="replace")]
    assert len(sources) > 50 and not offenders, offenders

# Markdown files that docs once pointed to but that no user of the repository has.
_FOREIGN = ("SPEC.md", "PERFORMANCE_NOTES.md", "VLLM_KV_EVENTS.md", "ROUTING.md")


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_no_doc_names_a_file_the_repository_lacks(doc):
    text = doc.read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w/.-])([A-Z][A-Z0-9_]*\.md)\b", text))
    missing = {name for name in named if not list(ROOT.glob(f"**/{name}"))}
    assert not missing & set(_FOREIGN) and not missing, f"{doc.name} names {sorted(missing)}"


# --- docs/spec.md says what the code does ----------------------------------------------------------

def _spec() -> str:
    return (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")


def test_spec_test_vectors_are_what_both_backends_compute(backend):
    rows = re.findall(r"^\| the (bytes|token ids) 0, 1, \.\., (\d+) \| [^|]*`block_size=(\d+)`\)? \| (\d+) \| "
                      r"`([\d, ]+)` \|$", _spec(), re.M)
    assert len(rows) == 3, rows
    for kind, last, block_size, seed, hashes in rows:
        data = bytes(range(int(last) + 1)) if kind == "bytes" else list(range(int(last) + 1))
        table = backend.SyncPrefixHashTable(seed=int(seed), block_size=int(block_size), background_eviction=False)
        try:
            assert [int(h) for h in table.get_prefix_hashes(data)] == [int(h) for h in hashes.split(", ")]
        finally:
            table.close()


def test_spec_configuration_table_is_the_code():
    rows = re.findall(r"^\| `(\w+)`(?: \(tokens\))? \| `(AIBRIX_\w+)` \| ([^|]+) \|", _spec(), re.M)
    assert [(field, var) for field, var, _ in rows] == list(ENV_VARS.items())
    defaults = Config()
    for field, _, default in rows:
        if field == "seed":
            assert defaults.seed is None and "random" in default
        else:
            assert float(default) == getattr(defaults, field), field


def test_every_range_of_decisions_names_the_last_one():
    """"D1..Dn" in a doc means every decision: n is the last heading of decisions.md."""
    last = max(int(n) for n in re.findall(r"^## D(\d+)\.", (ROOT / "docs" / "decisions.md").read_text(), re.M))
    ranges = [(doc.name, int(n)) for doc in DOCS for n in re.findall(r"\bD1\.\.D(\d+)\b", doc.read_text())]
    assert ranges, "no doc cites the decisions as D1..Dn"
    assert all(n == last for _, n in ranges), (last, ranges)
