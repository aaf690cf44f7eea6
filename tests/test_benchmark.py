"""The benchmark's own arithmetic (the measurements themselves are run, not tested: `alexnet benchmark`)."""

import json

import pytest

from alexnet.benchmark import epoch_rates, overall_rate, paired_ratio


def test_the_end_to_end_rate_weighs_each_epoch_by_its_images(tmp_path):
    # one whole epoch at 100 images/s, then half an epoch at 200: 1.5 epochs in 1 + 0.25 units of time
    lines = [{"epoch": 1.0, "images_per_s": 100.0}, {"epoch": 1.5, "images_per_s": 200.0, "partial": True}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert overall_rate(metrics) == pytest.approx(1.5 / 1.25 * 100.0)  # 120, not the last record's 200
    assert epoch_rates(metrics) == [100.0]  # the steady-state rate is a whole epoch's


def test_the_paired_ratio_is_the_median_of_each_rounds_ratio():
    # the machine slows down by half in round 2: each round's ratio is 2, the median rates' ratio is not
    ours, theirs = [1.0, 2.0, 1.1], [2.0, 4.0, 2.2]
    assert paired_ratio(ours, theirs) == pytest.approx(2.0)
    assert paired_ratio([1.0, 1.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_the_gpu_script_parses_checks_first_and_carries_the_records_in():
    """benchmarks/gpu.sh runs on a lent GPU only (never here): it must at least parse, time the checks before
    the experiments, and start the experiments from the committed run records."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert text.index("Section 1") < text.index("model_step.py") < text.index("Section 2")
    calls = [line.split()[2] for line in text.splitlines() if line.startswith("experiment ")]
    assert calls == ["relu-vs-tanh", "ablations", "lrn-cifar", "paper-recipe", "time-to-accuracy"]
    assert text.index("cp -r experiments/records") < text.index("experiment() {") < text.index("experiment \"")
    assert 'timeout "$cap"' in text and "--budget cpu" not in text
