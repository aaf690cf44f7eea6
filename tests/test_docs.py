"""The documentation: it builds in strict mode, every code block runs as written (or says why it is not run),
and its pages load in a browser with every image decoded."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!-- not run: (\S.*) -->")
RUN_LANGUAGES = ("sh", "python")


def code_blocks(path: Path) -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, reason it is not run or None) of every fenced block in `path`."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = re.match(r"^```(\w*)$", lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j] == "```")
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        reason = NOT_RUN.fullmatch(before.strip())
        blocks.append((i + 1, match.group(1), "\n".join(lines[i + 1:end]), reason.group(1) if reason else None))
        i = end + 1
    return blocks


def build_site(out: Path) -> subprocess.CompletedProcess:
    """`make docs` without make: the results figures copied in, then a strict build into `out`."""
    results = ROOT / "docs" / "results"
    shutil.rmtree(results, ignore_errors=True)
    shutil.copytree(ROOT / "experiments" / "results", results)
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = build_site(out)
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def test_the_site_builds_in_strict_mode_and_the_api_page_lists_the_public_names(site):
    api = (site / "api" / "index.html").read_text()
    for name in ("create_model", "from_pretrained", "save_pretrained", "list_models", "fit", "evaluate", "predict"):
        assert f'id="alexnet.{name}"' in api, name
    assert "Load every weight" not in api  # internal helpers stay out of the reference
    assert "The network of a pretrained folder" in api  # docstrings are there


def test_every_code_block_runs_or_says_why_not(tmp_path):
    """Blocks in sh or python run here (they must fit on a CPU in seconds); any other block must be preceded
    by `<!-- not run: REASON -->`. Other languages (bibtex, toml, text) are not code to run."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "ALEXNET_CACHE": str(tmp_path / "cache")}
    ran = 0
    for page in PAGES:
        for line, language, code, reason in code_blocks(page):
            if language not in RUN_LANGUAGES or reason is not None:
                continue
            command = ([sys.executable, "-c", code] if language == "python"
                       else ["bash", "-euo", "pipefail", "-c", code])
            out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, f"{page.name}:{line} ({language}) failed:\n{out.stdout}\n{out.stderr}"
            ran += 1
    assert ran >= 3


def test_the_block_parser_sees_the_not_run_marker():
    blocks = code_blocks(ROOT / "docs" / "running.md")
    assert blocks and all(reason for _, _, _, reason in blocks)
    runnable = [language for page in PAGES for _, language, _, reason in code_blocks(page) if reason is None]
    assert "python" in runnable


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(("page", "figures"), [("analyses/", 3), ("experiments/", 4)])
def test_pages_load_in_headless_chromium_with_every_image_decoded(browser, served, page, figures):
    result = browser.check(f"{served}/{page}")
    assert result.problems == []
    assert result.images >= figures
