"""The snapshot bench section (prefixindex/_tools/bench/snapshot.py): rows shaped like the other bench
rows, one value per backend with snapshot support, measured on a faithful copy. Figures are not
checked here (benchmarks are, by the bench itself): only that the rows say what they measured.
"""

from __future__ import annotations

from helpers import BACKENDS
from prefixindex._tools.bench import snapshot as section


def test_quick_rows():
    said = []
    rows = section.run(dict(BACKENDS), quick=True, budget_s=0.05, say=said.append)
    assert [r["id"] for r in rows] == [spec[0] for spec in section.ROWS] == ["snapshot_save", "snapshot_load",
                                                                          "snapshot_bytes"]
    assert said and "100,000 entries" in said[0]
    for row, spec in zip(rows, section.ROWS):
        assert row["title"] == spec[1] and row["target"] == spec[4] and row["better"] == "lower"
        assert sorted(row["values"]) == sorted(BACKENDS)
        for name, value in row["values"].items():
            assert "error" not in value, value
            assert value["median"] > 0 and value["entries"] == 100_000
            # the targets are the compiled core's: the pure-Python figures are not judged
            assert value["pass"] is (None if name == "python" else value["median"] <= spec[4])
    size = rows[2]["values"]["python"]
    assert size["file_bytes"] == round(size["median"] * size["entries"])
    if "cython" in BACKENDS:  # the same state: the same bytes
        assert rows[2]["values"]["python"]["file_bytes"] == rows[2]["values"]["cython"]["file_bytes"]
