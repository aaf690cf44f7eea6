"""`alexnet demo`: Imagenette, the paper's network, 15 minutes of wall time on a 2-core CPU.

Finds Imagenette (imagenette2-224.tar.gz) under $ALEXNET_DATA, prepares it once into
$ALEXNET_CACHE/stores/imagenette (default ~/.cache/alexnet), trains `alexnet` with the `demo` preset inside
what is left of the budget after keeping time for the final ten-crop evaluation, then evaluates the centre
crop (the last epoch's validation) and the ten crops, draws the first-layer kernels (Figure 3) and the
top-5 predictions on eight validation images (Figure 4, left), writes the run's report page and prints
where everything is. The figures and the report take a few seconds, kept out of the training budget.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from alexnet.analysis.kernels import write_kernels
from alexnet.analysis.predictions import store_predictions
from alexnet.analysis.report import write_report
from alexnet.config import load_config
from alexnet.data.prepare import cached_store
from alexnet.evaluate import evaluate_checkpoints
from alexnet.fsutil import write_json
from alexnet.train import fit

log = logging.getLogger(__name__)

IMAGENETTE = "imagenette2-224"
FIGURES_RESERVE_S = 10.0  # kernels, eight predictions and the report after the ten crops (8 s measured; the
# budget plan's margin covers a machine twice as slow)

MISSING = """\
alexnet demo needs Imagenette, and it is not here.

{reason}

Imagenette is 10 easy ImageNet classes (9,469 training and 3,925 validation images) published by fast.ai
at https://github.com/fastai/imagenette. Download the 224-pixel version, imagenette2-224.tgz
(https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-224.tgz), and put it, under the name
imagenette2-224.tar.gz or unpacked as imagenette2-224/, in the folder ALEXNET_DATA points to
(default ~/.cache/alexnet), then run the demo again:

    mkdir -p ~/.cache/alexnet && cd ~/.cache/alexnet
    curl -L -o imagenette2-224.tar.gz https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-224.tgz
"""


def demo_store() -> Path:
    """The prepared Imagenette store under $ALEXNET_CACHE/stores, prepared once from $ALEXNET_DATA."""
    return cached_store("imagenette", IMAGENETTE)


def run_demo(run_dir: str | None = None, minutes: float = 15.0, as_json: bool = False) -> int:
    """The demo; returns the process exit status (2 when Imagenette is missing, 128 + the signal's
    number when SIGINT or SIGTERM stopped the training)."""
    start = time.monotonic()
    try:
        store = demo_store()
    except FileNotFoundError as e:
        print(MISSING.format(reason=e), file=sys.stderr)
        return 2
    prepared = time.monotonic() - start
    # training plans itself into this, keeping time for the ten crops; the figures' time is kept here
    budget = minutes - prepared / 60 - FIGURES_RESERVE_S / 60
    if budget < 2:
        print(
            f"only {budget:.1f} minutes would be left for training of the {minutes:g}-minute budget; "
            "pass --minutes with more",
            file=sys.stderr,
        )
        return 2
    config = load_config("demo", [f"data.store={store}"])
    config = replace(config, run=replace(config.run, budget_minutes=round(budget, 3), reserve_ten_crop=True))
    run = Path(run_dir or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}")
    log.info(
        f"training the paper's network on Imagenette in what is left of {minutes:g} minutes ({budget:.1f}), "
        f"keeping time for the ten-crop evaluation; run folder {run}"
    )
    summary = fit(config, run)
    if summary["status"] == "interrupted":  # no ten-crop evaluation: the user asked to stop
        print(
            f"interrupted by signal {summary['signal']} at step {summary['step']}; checkpoint saved to "
            f"{summary['latest']}; run folder {run}; continue training with "
            f"alexnet train --resume --run-dir {run}",
            file=sys.stderr,
        )
        return 128 + summary["signal"]
    centre = summary["last"]
    log.info("evaluating the ten crops ...")
    ten = evaluate_checkpoints(
        [summary["latest"]],
        store,
        ten_crop=True,
        batch_size=config.data.eval_batch_size,
        precision=config.run.precision,
        in_memory=True,
    )
    kernels = write_kernels(summary["latest"])
    predictions = store_predictions(summary["latest"], store)
    wall = time.monotonic() - start
    result = {
        "epochs_trained": centre["epoch"],
        "centre_top1_accuracy": 1 - centre["val_top1_error"],
        "centre_top5_accuracy": 1 - centre["val_top5_error"],
        "ten_crop_top1_accuracy": 1 - ten["top1_error"],
        "ten_crop_top5_accuracy": 1 - ten["top5_error"],
        "train_images_per_s": centre["images_per_s"],
        "prepare_s": prepared,
        "wall_s": wall,
        "stopped_by": summary["status"],
    }
    write_json(run / "demo.json", result)
    report = write_report(run)  # after demo.json, which it shows
    if as_json:
        print(json.dumps({**result, "run_dir": str(run), "checkpoint": summary["latest"], "report": str(report)},
                         indent=2))
        return 0

    tower_shares = ", ".join(f"{b['mean_colour_share']:.2f}" for b in kernels["towers"])

    def accuracy(key: str) -> str:
        top1, top5 = result[f"{key}_top1_accuracy"], result[f"{key}_top5_accuracy"]
        return f"top-1 {100 * top1:.1f}%, top-5 {100 * top5:.1f}%"

    print(
        f"""
AlexNet (the paper's network, recipe in alexnet/configs/demo.toml) on Imagenette, {wall / 60:.1f} minutes:
  {centre["epoch"]:g} epochs, {centre["images_per_s"]:.0f} training images/s
  validation accuracy, centre crop: {accuracy("centre")}
  validation accuracy, ten crops:   {accuracy("ten_crop")}   (chance: 10%)

run folder   {run}
curves       {summary["plot"]}
metrics      {summary["metrics"]}  (TensorBoard: tensorboard --logdir {run / "tensorboard"})
checkpoint   {summary["latest"]}  (best: {summary["best"]})
kernels      {kernels["image"]}  (Figure 3; mean colour share per tower: {tower_shares})
predictions  {predictions["figure"]}  (Figure 4, left)
report       {report}  (open it in a browser; alexnet report {run} --open)
try          alexnet predict {summary["latest"]} some_photo.jpg
             alexnet retrieve {summary["latest"]} --data {store}   (Figure 4, right)""",
        flush=True,
    )
    return 0
