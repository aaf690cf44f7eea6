"""`alexnet report`: one self-contained page per run folder, checked as text and in a real headless browser."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
import urllib.request
import webbrowser
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import websocket
from PIL import Image

from alexnet.analysis.report import open_report, write_report
from alexnet.config import load_config, to_toml
from alexnet.rundir import write_metrics

SCRIPT = "<script>alert('x')</script>"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _png(colour: str, size: tuple[int, int] = (24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value))


def make_run(root: Path, num_classes: int | None = None) -> Path:
    """A run folder with every file the report reads, a 10-class store beside it, and some bad analyses."""
    store = root / "stores" / "imagenette"
    store.mkdir(parents=True)
    _write_json(store / "meta.json", {"classes": [f"n{i:08d}" for i in range(10)],
                                      "splits": {"val": {"images": 3925, "classes": 10}}})
    run = root / "run"
    (run / "analysis").mkdir(parents=True)
    overrides = [f"data.store={store}"] + ([f"model.num_classes={num_classes}"] if num_classes else [])
    (run / "config.toml").write_text(to_toml(load_config("demo", overrides)))
    record = {"epoch": 1.0, "train_loss": 2.1, "train_error": 0.7, "val_top1_error": 0.6, "val_top5_error": 0.2,
              "val_images": 3925, "lr": 0.02, "images_per_s": 70.0, "wall_time_s": 100.0, "world_size": 1}
    write_metrics(run / "metrics.jsonl", [record, {**record, "epoch": 2.0, "val_top1_error": 0.35,
                                                   "val_top5_error": 0.0545, "wall_time_s": 585.7}])
    (run / "curves.png").write_bytes(_png("navy"))
    _write_json(run / "environment.json", {"alexnet": "0.1.0", "torch": "2.14.1", "cpu": "AMD EPYC",
                                           "allocator": "mimalloc", "lrn_cpu": "cpp", "gpu": None})
    _write_json(run / "demo.json", {"epochs_trained": 2.0, "centre_top1_accuracy": 0.65,
                                    "centre_top5_accuracy": 0.9455, "ten_crop_top1_accuracy": 0.664,
                                    "ten_crop_top5_accuracy": 0.949, "train_images_per_s": 73.5, "wall_s": 837.2})
    analysis = run / "analysis"
    (analysis / "kernels.png").write_bytes(_png("orange"))
    _write_json(analysis / "kernels.json", {"title": "First-layer kernels", "summary": f"Tower 1 {SCRIPT} grey.",
                                            "image": "kernels.png", "towers": [1, 2]})
    _write_json(analysis / "retrieval_eval.json", {
        "title": "Retrieval precision", "summary": "Precision at k.",
        "table": {"columns": ["k", "precision", "note"], "rows": [[1, 0.123456, None], [5, 0.5, SCRIPT]]}})
    _write_json(analysis / "aaa_extra.json", {"title": "An extra analysis", "summary": "After the known ones."})
    _write_json(analysis / "features-imagenette-val.json", {"format": "alexnet-features-1", "shape": [3925, 4096]})
    (analysis / "broken.json").write_text('{"title": "cut off')
    _write_json(analysis / "bad_table.json", {"title": "Ragged", "summary": "x",
                                              "table": {"columns": ["a", "b"], "rows": [[1]]}})
    _write_json(analysis / "escape.json", {"title": "Escape", "summary": "y", "image": "../curves.png"})
    return run


class _Tags(HTMLParser):
    """Every start tag's attributes, in order."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_the_report_holds_every_section_escapes_strings_and_fetches_nothing(tmp_path):
    run = make_run(tmp_path)
    out = write_report(run)
    assert out == run / "report.html"
    assert not list(run.glob(".*tmp*"))  # written through a temporary, renamed into place
    page = out.read_text()

    for heading in ("<h1>run</h1>", "Config", "<details>", "Training", "Demo results",
                    "Final metrics beside the paper's", "Environment", "Analyses"):
        assert heading in page
    assert "alexnet</td>" in page and "mimalloc" in page and "0.1.0" in page
    assert "num_classes" not in page.split("<details>")[0]  # the config sits inside the collapsible block

    # our errors (last record, demo's ten crops) beside the paper's, and the 10-class store called not comparable
    for number in ("35.0 %", "5.5 %", "33.6 %", "5.1 %", "40.7 %", "18.2 %", "37.5 %", "17.0 %"):
        assert number in page
    assert "Not comparable" in page and "10 classes" in page and "90.0 % top-1" in page

    # analyses: known names first in their order, then the rest sorted; broken files get notes
    order = ["First-layer kernels", "Retrieval precision", "An extra analysis", "Ragged", "broken.json", "Escape"]
    assert [page.index(t) for t in order] == sorted(page.index(t) for t in order)
    assert "broken.json is not valid JSON" in page
    assert "table row 0 is not a list of 2 cells" in page
    assert "outside the analysis folder" in page
    assert "not sections): features-imagenette-val.json" in page
    assert '<td class="num">0.1235</td>' in page and "<td>—</td>" in page

    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page.lower()
    assert "url(" not in page and "@import" not in page
    tags = _tags(page)
    for tag, attrs in tags:
        for name in ("src", "href", "srcset", "action", "data", "poster"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, name, value)
    images = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert len(images) == 2
    assert all(src.startswith("data:image/png;base64,") for src in images)
    decoded = [base64.b64decode(src.split(",", 1)[1]) for src in images]
    assert decoded == [(run / "curves.png").read_bytes(), (run / "analysis" / "kernels.png").read_bytes()]


def test_a_run_folder_with_nothing_but_its_checkpoints_folder_says_what_is_missing(tmp_path):
    (tmp_path / "checkpoints").mkdir()  # a run killed before its first epoch ended
    page = write_report(tmp_path, tmp_path / "out" / "page.html").read_text()
    for missing in ("config.toml is missing", "metrics.jsonl is missing", "curves.png is missing",
                    "environment.json is missing", "No analyses: analysis/ is missing", "not measured",
                    "class count is unknown"):
        assert missing in page
    assert "Demo results" not in page  # only a demo run has demo.json; a training run lacks nothing
    assert "<img" not in page


def test_a_damaged_image_and_metrics_line_get_notes(tmp_path):
    (tmp_path / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "val_top1_error": 0.5, "val_top5_error": 0.25}\n{cut\n')
    page = write_report(tmp_path).read_text()
    assert "curves.png is not a readable image" in page and "<img" not in page
    assert "1 line(s) of metrics.jsonl are not JSON objects" in page
    assert "50.0 %" in page and "25.0 %" in page


def test_a_1000_class_run_is_compared_with_the_paper(tmp_path):
    page = write_report(make_run(tmp_path, num_classes=1000)).read_text()
    assert "Not comparable" not in page
    assert "with 1000 classes, 3,925 validation images: comparable to the paper" in page


def test_a_folder_that_is_not_a_run_is_a_one_line_error_and_writes_nothing(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    result = subprocess.run([sys.executable, "-m", "alexnet", "report", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "is not a run folder" in result.stderr
    assert "config.toml" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_missing_run_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_report(tmp_path / "nowhere")


def test_open_report_opens_the_file_uri_and_says_when_it_cannot(tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    assert open_report(tmp_path / "report.html") is True
    assert opened == [(tmp_path / "report.html").resolve().as_uri()]

    def refuse(url):
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(webbrowser, "open", refuse)
    assert open_report(tmp_path / "report.html") is False


# ---- the same page in a real browser: headless Chromium over the DevTools protocol


@dataclass
class PageCheck:
    images: int
    problems: list[str] = field(default_factory=list)


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol's websocket."""

    def __init__(self, binary: str, profile: Path):
        # port 0: Chromium picks a free port and writes it into DevToolsActivePort in the profile
        self.log = profile / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                          "--remote-debugging-port=0", "about:blank"],
                                         stdout=subprocess.DEVNULL, stderr=log)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while len(port_file.read_text().splitlines() if port_file.is_file() else []) < 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{binary} did not start its DevTools server: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        # no Origin header: Chromium refuses websocket clients from origins it was not told to allow
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True, timeout=30)
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params) -> dict:
        """Send one command and return its result; events read meanwhile go to self.events."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {seconds} s")
            self.events.append(json.loads(self.ws.recv()))

    def check(self, url: str) -> PageCheck:
        """Load `url`; problems: console errors, uncaught exceptions, error log entries, undecoded images."""
        self.events.clear()
        nav = self.call("Page.navigate", url=url)
        if "errorText" in nav:
            return PageCheck(0, [f"navigation failed: {nav['errorText']}"])
        self.wait_for("Page.loadEventFired")
        images = self.call("Runtime.evaluate", awaitPromise=True, returnByValue=True, expression="""
            Promise.all(Array.from(document.images, img => img.decode().then(() => true, () => false)
                .then(decoded => ({src: img.src.slice(0, 40), decoded, width: img.naturalWidth}))))
        """)["result"]["value"]
        problems = [f"image {i['src']}... not decoded (naturalWidth {i['width']})"
                    for i in images if not i["decoded"] or i["width"] <= 0]
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                problems.append("console." + params["type"] + ": "
                                + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                problems.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                problems.append(f"log: {params['entry']['text']}")
        return PageCheck(len(images), problems)

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_the_report_loads_in_headless_chromium_with_every_image_decoded(browser, tmp_path):
    page = write_report(make_run(tmp_path))
    result = browser.check(page.resolve().as_uri())
    assert result.problems == []
    assert result.images == 2


def test_the_browser_check_fails_a_broken_image_a_blocked_fetch_and_a_console_error(browser, tmp_path):
    good = base64.b64encode(_png("green")).decode()
    broken = tmp_path / "broken.html"
    broken.write_text(f'<img src="data:image/png;base64,{good}"><img src="data:image/png;base64,iVBORw0KGgoAAAA">')
    result = browser.check(broken.as_uri())
    assert result.images == 2
    assert len(result.problems) == 1 and "not decoded" in result.problems[0]

    # a fetch slipped into the report: the page's Content-Security-Policy blocks it, and the block is an error
    report = write_report(make_run(tmp_path / "run"))
    fetching = tmp_path / "fetching.html"
    fetching.write_text(report.read_text().replace("<h1>", '<img src="http://192.0.2.1/x.png"><h1>', 1))
    result = browser.check(fetching.as_uri())
    assert result.images == 3
    assert any("Content Security Policy" in p and "192.0.2.1" in p for p in result.problems)

    noisy = tmp_path / "noisy.html"
    noisy.write_text("<p>hi</p><script>console.error('something broke')</script>")
    assert browser.check(noisy.as_uri()) == PageCheck(0, ["console.error: something broke"])
