"""The snapshot bench section (prefixindex/_tools/bench/snapshot.py): rows shaped like the other bench
rows, one value per backend with snapshot support, measured on a faithful copy. Figures are not
checked here (benchmarks are, by the bench itself): only that the rows say what they measured.
"""

from __future__ import annotations

from conftest import BACKENDS
from prefixindex._tools.bench import snapshot as section


def test_quick_rows():
    said = []
    rows = section.run(dict(BACKENDS), quick=True, budget_s=0.05, say=said.append)
    assert [r["id"] for r in rows] == ["snapshot_save", "snapshot_load", "snapshot_bytes"]
    assert said and "100,000 entries" in said[0]
    for row in rows:
        assert set(row) == {"id", "title", "unit", "better", "target", "values", "speedup", "speedup_target",
                            "speedup_pass"}
        assert ("10^5" in row["title"] or row["unit"] == "B/entry") and row["better"] == "lower"
        for name in BACKENDS:
            if hasattr(BACKENDS[name].SyncPrefixHashTable, "_export_state"):
                value = row["values"][name]
                assert "error" not in value, value
                assert value["median"] > 0 and value["entries"] == 100_000
                # a quick run is not held to the time targets (the compiled core's), only to the size one
                assert value["pass"] is (value["median"] <= 24.0 if row["unit"] == "B/entry" else None)
    assert [r[0] for r in section.ROWS] == [r["id"] for r in rows] and all(len(r) == 6 for r in section.ROWS)
    size = rows[2]["values"]["python"]
    assert size["file_bytes"] == round(size["median"] * size["entries"])
    if len([n for n in BACKENDS if hasattr(BACKENDS[n].SyncPrefixHashTable, "_export_state")]) == 2:
        assert rows[2]["values"]["python"]["file_bytes"] == rows[2]["values"]["cython"]["file_bytes"]
