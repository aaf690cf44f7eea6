"""`alexnet report RUN_DIR`: one self-contained HTML page per run folder.

The page opens offline and shares as a single file: images are embedded as base64 data URIs, the style is
inline CSS, there is no JavaScript, no link to fetch and a Content-Security-Policy that forbids any fetch.
Every string read from the run folder is escaped. Whatever part of the run folder is missing or unreadable
is said so on the page; only a missing run folder is an error.

Sections, in order: the title (folder, model, store, when it ran, alexnet version); the config; training
(curves.png and the last metrics.jsonl record); the demo's results (demo.json); our final error beside the
paper's (Tables 1 and 2 of Krizhevsky et al. 2012), with whether the run's data set is comparable; the
environment (environment.json); then the analyses.

Analyses are RUN/analysis/*.json, each an object with

    "title"    str, the section's heading
    "summary"  str, a paragraph (blank lines separate paragraphs)
    "image"    optional str, a PNG (or JPEG, GIF, WebP) file name relative to RUN/analysis/, embedded
    "table"    optional {"columns": [str, ...], "rows": [[cell, ...], ...]}, a cell a str or a number
               (null shows as a dash); every row has as many cells as there are columns

and any other keys, which the report ignores. The known names come first in KNOWN_ANALYSES' order, then
any other *.json sorted by name. A file that breaks the contract gets a visible note in its section; an
object with neither "title" nor "summary" is an analysis's data file (a feature cache's metadata), listed
by name only.
"""

from __future__ import annotations

import json
import os
import tomllib
import webbrowser
from datetime import datetime
from pathlib import Path

from alexnet import __version__
from alexnet.analysis import page
from alexnet.errors import DataError
from alexnet.fsutil import atomic_write
from alexnet.paths import resolve_store
from alexnet.rundir import RunPaths, read_metrics

KNOWN_ANALYSES = ("kernels.json", "predictions.json", "retrieval.json", "retrieval_eval.json", "codes.json")
IMAGENET_CLASSES = 1000
# One CNN, error in %: Table 2 (ILSVRC-2012 validation) and Table 1 (ILSVRC-2010 test), both from the
# ten-patch prediction of Section 4.1.
PAPER_2012_VAL = {"top1": 40.7, "top5": 18.2}
PAPER_2010_TEST = {"top1": 37.5, "top5": 17.0}



def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the run's HTML report atomically and return its path.

    Args:
        run_dir: a run folder (any of its files may be missing).
        out: where to write the page; default RUN_DIR/report.html.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist or is not a folder; pass a folder that "
                                "`alexnet train` or `alexnet demo` wrote")
    paths = RunPaths(run)
    if not any(p.exists() for p in (paths.config, paths.metrics, paths.checkpoints)):
        raise DataError(f"{run} is not a run folder: it holds none of config.toml, metrics.jsonl and checkpoints/ "
                        "that `alexnet train` and `alexnet demo` write; pass such a folder")
    page = render(run)
    path = Path(out) if out is not None else run / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(page.encode("utf-8")))
    return path


def open_report(path: str | os.PathLike) -> bool:
    """Open the page in the user's browser; False when no browser could be started."""
    try:
        return webbrowser.open(Path(path).resolve().as_uri())
    except webbrowser.Error:
        return False


def render(run: Path) -> str:
    """The whole page for run folder `run`, as a string."""
    paths = RunPaths(run)
    config_text, config_note = _read_text(paths.config)
    config, toml_note = _parse_toml(config_text)
    metrics, metrics_note = _read_metrics(paths.metrics)
    env, env_note = _read_json(paths.environment)
    demo, demo_note = _read_json(run / "demo.json")
    env = env if isinstance(env, dict) else None
    demo = demo if isinstance(demo, dict) else None
    body = [
        _title(run, config, config_note, metrics, env),
        _config_section(config_text, config_note or toml_note),
        _training_section(paths.plot, metrics, metrics_note),
        _demo_section(run / "demo.json", demo, demo_note),
        _paper_section(config, metrics, demo),
        _environment_section(env, env_note),
        _analyses_section(run / "analysis"),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{page.CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{page.escape(run.resolve().name)} · alexnet report</title>\n<style>{page.STYLE}</style>\n"
        "</head>\n<body>\n"
        + "\n".join(body)
        + f"\n<p><small>Written by alexnet {page.escape(__version__)} on "
        f"{page.escape(page.when(datetime.now().timestamp()))}."
        "</small></p>\n</body>\n</html>\n"
    )


# ---- reading: each reader returns (value, note); a note says in words why the value is missing


def _read_text(path: Path) -> tuple[str | None, str | None]:
    try:
        return path.read_text(encoding="utf-8", errors="replace"), None
    except FileNotFoundError:
        return None, f"{path.name} is missing."
    except OSError as e:
        return None, f"{path.name} could not be read: {e}"


def _read_json(path: Path) -> tuple[object, str | None]:
    text, note = _read_text(path)
    if text is None:
        return None, note
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"{path.name} is not valid JSON: {e}"
    if not isinstance(value, dict):
        return None, f"{path.name} holds a JSON {type(value).__name__}, not an object."
    return value, None


def _parse_toml(text: str | None) -> tuple[dict, str | None]:
    if text is None:
        return {}, None
    try:
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as e:
        return {}, f"config.toml is not valid TOML ({e}); shown as it is."


def _read_metrics(path: Path) -> tuple[list[dict], str | None]:
    text, note = _read_text(path)
    if text is None:
        return [], note
    records, bad = read_metrics(path)
    if bad:
        note = f"{bad} line(s) of metrics.jsonl are not JSON objects and were skipped."
    elif not records:
        note = "metrics.jsonl holds no records yet."
    return records, note


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


# ---- formatting


# ---- sections


def _table_of(config: dict, name: str) -> dict:
    """config.toml's table `name` ({} when it is missing or not a table)."""
    table = config.get(name)
    return table if isinstance(table, dict) else {}


def _ran(run: Path, metrics: list[dict]) -> str:
    """When it ran: the file times of environment.json (written at each start) and metrics.jsonl (each epoch)."""
    paths = RunPaths(run)
    stamps = [(p.name, t) for p in (paths.environment, paths.metrics) if (t := _mtime(p)) is not None]
    if not stamps:
        return "unknown (no environment.json or metrics.jsonl)"
    ran = " → ".join(page.when(t) for _, t in stamps) + f" (file times of {' and '.join(n for n, _ in stamps)})"
    wall = metrics[-1].get("wall_time_s") if metrics else None
    return ran + (f"; {wall / 60:.1f} min of training" if page.is_number(wall) else "")


def _title(run: Path, config: dict, config_note: str | None, metrics: list[dict], env: dict | None) -> str:
    model = _table_of(config, "model").get("name") or f"unknown ({config_note or 'config.toml has no model.name'})"
    rows = [("model", model), ("store", _table_of(config, "data").get("store") or "unknown"),
            ("ran", _ran(run, metrics)),
            ("alexnet", env.get("alexnet", "unknown") if env else "unknown (no environment.json)")]
    meta = "".join(f"<tr><td>{page.escape(k)}</td><td>{page.escape(v)}</td></tr>" for k, v in rows)
    return (f"<h1>{page.escape(run.resolve().name)}</h1>\n<p>AlexNet run report · {page.escape(run.resolve())}</p>\n"
            f'<table class="meta">{meta}</table>')


def _config_section(text: str | None, note: str | None) -> str:
    parts = ["<h2>Config</h2>"]
    if note:
        parts.append(page.note(note))
    if text is not None:
        parts.append(f"<details>\n<summary>config.toml</summary>\n<pre>{page.escape(text)}</pre>\n</details>")
    return "\n".join(parts)


def _training_section(plot: Path, metrics: list[dict], note: str | None) -> str:
    parts = ["<h2>Training</h2>", page.image(plot)]
    if note:
        parts.append(page.note(note))
    if metrics:
        parts.append(f"<p>The last of {len(metrics)} metrics.jsonl records:</p>")
        parts.append(page.records_table(metrics[-1]))
    return "\n".join(parts)


def _demo_section(path: Path, demo: dict | None, note: str | None) -> str:
    if not path.exists():
        return ""  # only `alexnet demo` writes one: a training run is not missing anything
    parts = ["<h2>Demo results</h2>"]
    parts.append(page.note(note) if demo is None else page.records_table(demo))
    return "\n".join(parts)


def _validated(metrics: list[dict]) -> dict | None:
    """The last record with a validation error (None: never validated)."""
    return next((m for m in reversed(metrics) if page.is_number(m.get("val_top1_error"))), None)


def _errors_from_demo(demo: dict | None, crop: str) -> dict | None:
    keys = (f"{crop}_top1_accuracy", f"{crop}_top5_accuracy")
    if demo is None or not all(page.is_number(demo.get(k)) for k in keys):
        return None
    return {"top1": 100 * (1 - demo[keys[0]]), "top5": 100 * (1 - demo[keys[1]])}


def _dataset(config: dict) -> tuple[str | None, int | None, int | None, str | None]:
    """(store name, classes, validation images, note) from the config and, when it is readable, the store."""
    store = _table_of(config, "data").get("store")
    classes = _table_of(config, "model").get("num_classes")
    classes = classes if page.is_number(classes) and classes >= 1 else None
    if not isinstance(store, str):
        return None, classes, None, "config.toml names no data.store"
    meta, note = _read_json(resolve_store(store) / "meta.json")
    val = None
    if meta is not None:
        classes = classes or len(meta.get("classes") or []) or None
        splits = meta.get("splits") if isinstance(meta.get("splits"), dict) else {}
        val = next((s.get("images") for name, s in splits.items() if name.startswith("val") and isinstance(s, dict)),
                   None)
    return Path(store).name, classes, val, note and f"the store's {note}"


def _comparability(config: dict) -> tuple[bool, str]:
    """Whether the run's data set is comparable with the paper's ImageNet, and why, in words."""
    name, classes, val, note = _dataset(config)
    what = f"store {name!r}" if name else "an unnamed store"
    if classes is None:
        return False, (f"The run's class count is unknown ({note}): whether the paper's numbers are "
                       "comparable cannot be told from this folder.")
    if classes != IMAGENET_CLASSES:
        chance1, chance5 = 100 * (1 - 1 / classes), 100 * max(0.0, 1 - 5 / classes)
        return False, (f"Not comparable: this run trained on {what} with {classes} classes, not ImageNet's "
                       f"{IMAGENET_CLASSES}. Guessing alone gives {chance1:.1f} % top-1 and {chance5:.1f} % top-5 "
                       "error here; the paper's numbers are shown for scale only.")
    images = f", {val:,} validation images" if isinstance(val, int) else ""
    return True, (f"This run trained on {what} with {classes} classes{images}: comparable to the paper when the "
                  "store is ILSVRC-2012 (50,000 validation images). The paper's numbers are ten-patch predictions "
                  "(Section 4.1), so compare them with our ten-crop column.")


def _paper_section(config: dict, metrics: list[dict], demo: dict | None) -> str:
    last = _validated(metrics)
    centre = ({"top1": 100 * last["val_top1_error"], "top5": 100 * last["val_top5_error"]}
              if last and page.is_number(last.get("val_top5_error")) else _errors_from_demo(demo, "centre"))
    ten = _errors_from_demo(demo, "ten_crop")
    columns = ["error", "ours, centre crop", "ours, ten crops",
               "paper, ILSVRC-2012 val (1 CNN, Table 2)", "paper, ILSVRC-2010 test (1 CNN, Table 1)"]

    def pct(errors: dict | None, key: str) -> str:
        return f"{errors[key]:.1f} %" if errors else "not measured"

    rows = [[label, pct(centre, key), pct(ten, key), pct(PAPER_2012_VAL, key), pct(PAPER_2010_TEST, key)]
            for label, key in (("top-1", "top1"), ("top-5", "top5"))]
    comparable, says = _comparability(config)
    parts = ["<h2>Final metrics beside the paper's</h2>", page.table(columns, rows),
             f"<p>{page.escape(says)}</p>" if comparable else page.note(says)]
    if ten is None:
        parts.append(page.note("No ten-crop result in this folder (only a demo's demo.json records one); "
                           "`alexnet evaluate CHECKPOINT --data STORE --ten-crop` measures it."))
    return "\n".join(parts)


def _environment_section(env: dict | None, note: str | None) -> str:
    parts = ["<h2>Environment</h2>"]
    parts.append(page.note(note) if env is None else page.records_table(env))
    return "\n".join(parts)


def _analysis_files(folder: Path) -> list[Path]:
    present = {p.name: p for p in folder.glob("*.json") if p.is_file()}
    known = [present.pop(name) for name in KNOWN_ANALYSES if name in present]
    return known + [present[name] for name in sorted(present)]


def _analyses_section(folder: Path) -> str:
    sections, others = [], []
    for path in _analysis_files(folder) if folder.is_dir() else []:
        data, note = _read_json(path)
        if data is not None and "title" not in data and "summary" not in data:
            others.append(path.name)  # an analysis's data file (a feature cache's metadata), not a section
        else:
            sections.append(_analysis(path, data, note))
    parts = ["<h2>Analyses</h2>", *sections]
    if not sections:
        why = "holds no sections" if folder.is_dir() else "is missing"
        parts.append(page.note(f"No analyses: {folder.name}/ {why}; the analysis commands write their results there."))
    if others:
        parts.append(f"<p><small>Also in {folder.name}/, without a title or summary (not sections): "
                     f"{page.escape(', '.join(others))}.</small></p>")
    return "\n".join(parts)


def _analysis(path: Path, data: dict | None, note: str | None) -> str:
    """One analysis file's section, with a note for each part that breaks the contract."""
    if data is None:
        return f"<h3>{page.escape(path.name)}</h3>\n{page.note(note)}"
    title = data.get("title")
    parts = [f"<h3>{page.escape(title if isinstance(title, str) else path.name)}</h3>"]
    if not isinstance(title, str):
        parts.append(page.note(f'{path.name} has no "title" string.'))
    summary = data.get("summary")
    parts.append(page.paragraphs(summary) if isinstance(summary, str)
                 else page.note(f'{path.name} has no "summary" string.'))
    if "image" in data:
        parts.append(_analysis_image(path, data["image"]))
    if "table" in data:
        parts.append(_analysis_table(path, data["table"]))
    return "\n".join(parts)


def _analysis_image(path: Path, name: object) -> str:
    if not isinstance(name, str):
        return page.note(f'{path.name}: "image" must be a file name, not {json.dumps(name)}.')
    folder = path.parent.resolve()
    image = (folder / name).resolve()
    if not image.is_relative_to(folder):
        return page.note(f'{path.name}: "image" {name!r} is outside the analysis folder; not embedded.')
    return page.image(image)


def _analysis_table(path: Path, table: object) -> str:
    columns = table.get("columns") if isinstance(table, dict) else None
    rows = table.get("rows") if isinstance(table, dict) else None
    if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        return page.note(f'{path.name}: "table" needs "columns", a list of strings; table not shown.')
    if not isinstance(rows, list):
        return page.note(f'{path.name}: "table" needs "rows", a list of rows; table not shown.')
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            return page.note(f'{path.name}: table row {i} is not a list of {len(columns)} cells '
                         f"({json.dumps(row)[:80]}); table not shown.")
    return page.table(columns, rows)
