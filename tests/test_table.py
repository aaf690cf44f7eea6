"""experiments/README.md is generated from the results files: old-network rows are marked, records listed."""

import json

from alexnet.experiments.table import write_table


def _results(claim: str, **extra) -> dict:
    return {"table": {"claim": claim, "paper": "p", "ours": "o", "setting": "s"}, "command": "alexnet experiment x",
            "experiment": claim.replace(" ", "-"), "budget": {"name": "cpu", "reduced": True, "note": "short"},
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


def test_claims_carry_verdicts_and_each_experiment_one_settings_row(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    judged = _results("judged")
    judged["table"] = [{**judged["table"], "verdict": "direction only"}, {**judged["table"], "claim": "second"}]
    (results / "a.json").write_text(json.dumps(judged))
    text = write_table(tmp_path).read_text()
    claims, settings = text.split("How each experiment ran")
    assert "| judged ([plot](results/x.png)) | p | o | direction only |" in claims
    assert "| second ([plot](results/x.png)) | p | o | not judged (results file older than verdicts) |" in claims
    assert settings.count("](results/a.json)") == 1
    assert "| cpu (**reduced**: short); s | 1.0 min | `alexnet experiment x` |" in settings


def test_a_settings_row_names_its_budget_once(tmp_path):
    """Older results files repeat the budget in their rows' setting; the settings table shows it once."""
    results = tmp_path / "results"
    results.mkdir()
    old = _results("old")
    old["table"]["setting"] = "budget cpu (**reduced**: short); demo recipe"
    (results / "a.json").write_text(json.dumps(old))
    text = write_table(tmp_path).read_text()
    assert "| cpu (**reduced**: short); demo recipe | 1.0 min |" in text
    assert text.count("**reduced**: short") == 1


def test_runs_from_several_machines_are_each_named_with_their_count(tmp_path):
    """Records carry runs across machines: the settings row names every machine that trained a run."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "one.json").write_text(json.dumps(_results("here only", machines={"CPU": 3})))
    (results / "two.json").write_text(json.dumps(_results("mixed", machines={"CPU": 10, "Other CPU": 1})))
    (results / "old.json").write_text(json.dumps(_results("before machines were kept")))
    text = write_table(tmp_path).read_text()
    settings = text.split("How each experiment ran")[1]
    row = {name: next(line for line in settings.splitlines() if f"](results/{name}.json)" in line)
           for name in ("one", "two", "old")}
    assert "| CPU, 2 cores (cpu, torch 2.14.1) |" in row["one"] and "| CPU, 2 cores (cpu, torch 2.14.1) |" in row["old"]
    assert "| CPU: 10 runs, Other CPU: 1 run (results written on CPU, 2 cores, torch 2.14.1) |" in row["two"]
