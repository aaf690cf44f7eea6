"""experiments/README.md is generated from the results files: old-network rows are marked, records listed."""

import json

from alexnet.experiments.table import write_table


def _results(claim: str, **extra) -> dict:
    return {"table": {"claim": claim, "paper": "p", "ours": "o", "setting": "s"}, "command": "alexnet experiment x",
            "wall_time_s": 60.0, "plot": "x.png",
            "hardware": {"gpu": None, "cpu": "CPU", "cores": 2, "device": "cpu", "torch": "2.14.1"}, **extra}


def test_rows_measured_on_the_old_network_are_marked_and_single_run_records_are_listed(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.json").write_text(json.dumps(_results("new claim")))
    (results / "b.json").write_text(json.dumps(_results("old claim", old_network="inverted dropout")))
    (results / "run.json").write_text(json.dumps({"command": "alexnet train --config paper"}))
    text = write_table(tmp_path).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "claim" in line]
    new, old = (next(r for r in rows if name in r) for name in ("new claim", "old claim"))
    assert "old network" not in new
    assert "**measured on the old network** (inverted dropout; to be re-run): o" in old
    assert "- [run.json](results/run.json): `alexnet train --config paper`" in text
