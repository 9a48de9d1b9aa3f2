"""The search page's quality panel: ``/api/quality`` and ``/api/quality.png`` over a run ``job run`` scored, a run
without ``eval/`` answered with the command that scores it, and the panel in a real headless Chromium (screenshot
``test-artifacts/serve/7_quality.png``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import TEST_MODEL
from job.cli import main
from serve_helpers import browser_or_skip, get, get_json, running, snapshot, wait_state

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "serve"


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nuscenes_fixture import make_nuscenes_fixture

    base = tmp_path_factory.mktemp("quality")
    info = make_nuscenes_fixture(base / "nuscenes", n_logs=3, scenes_per_log=2, samples_per_scene=3,
                                 sweeps_per_sample=0, width=320, height=180)
    out = base / "run"
    assert main(["run", "--source", str(info.root), "--out", str(out), *TEST_MODEL, "--image-size", "64",
                 "--thumbnails", "--n-epochs", "30", "--workers", "0", "--no-progress", "--log-level", "WARNING",
                 "--min-positives", "3"]) == 0
    assert (out / "eval" / "eval.json").exists()
    return out


@pytest.fixture(scope="module")
def server(scored_run: Path) -> Iterator[str]:
    from job.serve import SearchService

    before = snapshot(scored_run)
    with running(SearchService(str(scored_run), device="cpu")) as url:
        yield url
    assert snapshot(scored_run) == before


def test_quality_api(server: str, scored_run: Path) -> None:
    stored = json.loads((scored_run / "eval" / "eval.json").read_text())
    status, info = get_json(server + "/api/info")
    assert status == 200 and info["quality"] is True and info["quality_hint"] is None
    status, q = get_json(server + "/api/quality")
    assert status == 200 and q["images"] == stored["images"] and q["min_visibility"] == 2
    assert [(r["column"], r["MAP@100"], r["chance MAP@100"]) for r in q["scores"]] == \
        [(s["column"], s["map_at_100"], s["chance_map_at_100"]) for s in stored["scores"]]
    assert {r["task"] for r in q["scores"]} >= {"text → image", "image → image"}
    status, ctype, png = get(server + q["figure"])
    assert status == 200 and ctype == "image/png" and png == (scored_run / "eval" / "per_category.png").read_bytes()


def test_a_run_without_scores_says_how_to_score_it(scored_run: Path, tmp_path: Path) -> None:
    from job.serve import SearchService

    run = tmp_path / "run"
    shutil.copytree(scored_run, run)
    shutil.rmtree(run / "eval")
    with running(SearchService(str(run), device="cpu", preload_model=False)) as url:
        status, info = get_json(url + "/api/info")
        assert info["quality"] is False and f"python -m job eval --run {run}" in info["quality_hint"]
        for path in ("/api/quality", "/api/quality.png"):
            status, body = get_json(url + path)
            assert status == 404 and "python -m job eval" in body["error"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with browser_or_skip() as driver:
        yield driver


def test_quality_panel_in_a_real_browser(server: str, scored_run: Path, browser: Any) -> None:
    """The panel lists every task and vector column with MAP@100 and chance, the better column of each task in bold,
    and links the per-category figure."""
    from selenium.webdriver.common.by import By

    stored = json.loads((scored_run / "eval" / "eval.json").read_text())
    browser.get(server + "/")
    wait_state(browser, "ready")
    rows = browser.find_elements(By.CSS_SELECTOR, "#quality-table tr")[1:]
    assert len(rows) == len(stored["scores"])
    for row, s in zip(rows, stored["scores"]):
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1] == s["column"] and cells[2] == f"{s['map_at_100']:.3f}" and cells[3] == \
            f"{s['chance_map_at_100']:.3f}"
    bold = browser.find_elements(By.CSS_SELECTOR, "#quality-table td.best")
    assert len(bold) >= len({s["task"] for s in stored["scores"]})
    assert "images" in browser.find_element(By.ID, "quality-note").text
    link = browser.find_element(By.ID, "quality-figure")
    assert link.get_attribute("href").endswith("/api/quality.png")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    panel = browser.find_element(By.ID, "map-panel")
    browser.execute_script("arguments[0].scrollIntoView()", panel)
    browser.save_screenshot(str(ARTIFACTS / "7_quality.png"))
    panel.screenshot(str(ARTIFACTS / "7_quality_panel.png"))
