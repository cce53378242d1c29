"""`ccd report`: the static ops dashboard, from a home with blocks (one rejected), registry
versions and decisions, and CCD stream reports; rendered in headless Chromium when installed."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest
from PIL import Image

from ccd import registry
from ccd.cli import main
from ccd.config import GateConfig, RunConfig
from ccd.errors import ValidationFailedError
from ccd.home import Home
from ccd.lake import catalog
from ccd.lake.ingest import ingest_block
from ccd.models import BPRConfig, build_model, io
from ccd.report import build_dashboard
from tests.conftest import make_block

CHROMIUM = shutil.which("chromium")
SECTIONS = ["Blocks and validation", "Quality over blocks", "Models: size and scoring latency", "Registry history"]


def _stream_report(method: str, base: float) -> dict:
    """A `reports/stream/<method>/metrics.json` as `ccd.continual.loop.write_report` writes it."""
    def side(offset: float, params: int) -> dict:
        blocks = []
        for k in range(3):
            own = base + offset + 0.01 * k
            summary = None if k == 0 else {"recall@20": {"LA": own, "RA": own - 0.02, "H": own - 0.01}}
            blocks.append({"block": k, "recall@20": own, "ndcg@20": own / 2, "summary": summary})
        return {"params": params, "matrix": [], "blocks": blocks}

    stages = [{"block": k, "stage": f"{method}-student", "run_key": "default", "seconds": 1.5 + k} for k in range(3)]
    return {"method": method, "run_key": "default", "blocks": [0, 1, 2], "student": side(0.0, 800),
            "teacher": side(0.05, 40_000), "stages": stages}


def _save_student(home: Home, block: int) -> tuple:
    record = catalog.get_block(home, block)
    model = build_model(BPRConfig(dim=8, seed=block), record.n_users, record.n_items)
    return io.save(model, home.model_dir(block, "student")), model.parameter_count()


@pytest.fixture(scope="module")
def full_home(tmp_path_factory) -> Home:
    root = tmp_path_factory.mktemp("dashboard")
    home = Home.resolve(root / "home")
    for block in (0, 1):
        path = root / f"block_{block}.csv"
        make_block(block=block, seed=block).to_csv(path, index=False)
        ingest_block(home, path, block, RunConfig().lake)
    bad = root / "block_2.csv"
    make_block(block=2).drop(columns="item_id").to_csv(bad, index=False)
    with pytest.raises(ValidationFailedError):
        ingest_block(home, bad, 2, RunConfig().lake)

    for block, score in ((0, 0.30), (1, 0.10)):
        folder, n_params = _save_student(home, block)
        version = registry.register(home, "student", folder, block, "ccd", {"h_recall@20": score, "recall@20": score}, n_params)
        registry.propose(home, "student", version.version, GateConfig())  # v1 promoted, v2 kept as candidate
    registry.promote(home, "student", 2, "<b>forced</b> by hand")  # markup in a reason must come out escaped
    for method, base in (("ccd", 0.2), ("finetune", 0.1)):
        folder = home.reports / "stream" / method
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(_stream_report(method, base)))
    return home


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_dashboard_shows_every_section_from_the_records(full_home, tmp_path):
    result = build_dashboard(full_home, tmp_path / "dash")
    page = (tmp_path / "dash" / "index.html").read_text()
    assert result["path"] == str(tmp_path / "dash" / "index.html")
    assert (result["blocks"], result["versions"], result["decisions"]) == (2, 2, 3)
    assert result["series"] == ["ccd student", "ccd teacher", "finetune student", "finetune teacher"]
    for title in SECTIONS:
        assert f"<h2>{title}" in page
    for name in ("blocks", "quality", "models"):
        width, height = _png_size(tmp_path / "dash" / f"{name}.png")
        assert width >= 600 and height >= 300
        assert f'<img src="{name}.png"' in page

    assert page.count("badge\" style=\"background:#c62828\">rejected") == 1  # the block-2 attempt
    assert "failed" in page and "block 2 rejected" in page
    assert "within tolerance" not in page and "first sane student" in page and "below production v1" in page
    assert "&lt;b&gt;forced&lt;/b&gt; by hand" in page and "<b>forced</b>" not in page
    # The latest block of each series: block 2, H = 0.2 + 0.05 + 0.02 - 0.01 for the ccd teacher.
    assert re.search(r"<td>ccd teacher</td><td>stream</td><td class=\"num\">40,000</td><td class=\"num\">2</td>"
                     r"(<td class=\"num\">[0-9.]+</td>){3}<td class=\"num\">0\.2600</td></tr>", page)
    assert "1.5" in page and "Stage seconds per block" in page
    assert "ms, 1 user (p50)" in page and result["problems"] == []
    assert _png_size(tmp_path / "dash" / "models.png")[0] == 1100  # sizes and latencies side by side
    # The current production (v2) is the highlighted row.
    assert re.search(r'<tr class="current"><td>student</td><td class="num">2</td>', page)


def test_dashboard_is_self_contained(full_home, tmp_path):
    build_dashboard(full_home, tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    for target in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert "://" not in target, target
    report_links = re.findall(r'href="([^"]+\.html)"', page)
    assert len(report_links) == 3 and all((tmp_path / link).resolve().exists() for link in report_links)


def test_dashboard_of_an_empty_home_explains_what_is_missing(tmp_path, capsys):
    home = tmp_path / "empty"
    assert main(["report", "--home", str(home), "--json", "--no-latency"]) == 0
    result = json.loads(capsys.readouterr().out)
    page = (home / "reports" / "dashboard" / "index.html").read_text()
    assert result["plots"] == {} and result["blocks"] == 0
    assert "No blocks ingested yet" in page and "No registered models yet" in page and "No registry decisions yet" in page
    assert not list((home / "reports" / "dashboard").glob("*.png"))


def test_registry_metrics_stand_in_without_stream_reports(full_home, tmp_path):
    home = Home.resolve(shutil.copytree(full_home.root, tmp_path / "home"))
    shutil.rmtree(home.reports / "stream")
    result = build_dashboard(home, latency=False)
    page = open(result["path"]).read()
    assert result["series"] == ["ccd student"]
    assert "the registry&#x27;s metrics of each version" in page
    assert "Latency: top-20" not in page  # not timed: no latency note, and models.png has the size panel only
    assert _png_size(home.reports / "dashboard" / "models.png")[0] == 600
    assert result["path"] == str(home.reports / "dashboard" / "index.html")


@pytest.mark.skipif(CHROMIUM is None, reason="headless rendering needs Debian's chromium package (apt-get install chromium)")
def test_dashboard_renders_in_headless_chromium(full_home, tmp_path):
    out = tmp_path / "dash"
    build_dashboard(full_home, out)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
         (out / "index.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    assert (pixels[5, 5] == (0x24, 0x29, 0x2F)).all()  # the page's header was drawn
    # The plots were loaded: the blocks plot's train bars (#4e79a7) and the green 'passed' badges.
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[:: 7]}
    assert (0x4E, 0x79, 0xA7) in colours and (0x2E, 0x7D, 0x32) in colours
