"""``job serve`` on a small real run: the JSON API over HTTP, and the page driven in a real headless Chromium.

The run is made once by ``python -m job run`` from the generated nuScenes fixture (4 scenes, keyframes and
sweeps, ViT-B-32 with seeded random weights at 64 px, thumbnails, index, text index, UMAP). The server runs
in a thread on 127.0.0.1 and a free port. The browser test uses the system's Chromium and chromedriver
(Debian: ``apt-get install chromium chromium-driver``; ``.ci/run`` installs them) and is skipped, saying
so, only where they are missing. Screenshots and timings go to ``test-artifacts/serve/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq
import pytest

from conftest import TEST_MODEL, _free_port
from job.cli import main

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "serve"
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                                else None)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def served_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nuscenes_fixture import make_nuscenes_fixture

    base = tmp_path_factory.mktemp("serve")
    info = make_nuscenes_fixture(base / "nuscenes", n_logs=4, scenes_per_log=1, samples_per_scene=3,
                                 sweeps_per_sample=1, width=320, height=180)
    out = base / "run"
    rc = main(["run", "--source", str(info.root), "--out", str(out), *TEST_MODEL, "--image-size", "64",
               "--include-sweeps", "--thumbnails", "--n-epochs", "50", "--workers", "0", "--no-progress",
               "--log-level", "WARNING"])
    assert rc == 0
    assert (out / "index" / "text.faiss").exists() and (out / "umap2d.parquet").exists()
    return out


@pytest.fixture(scope="module")
def server(served_run: Path) -> Iterator[str]:
    """The app on 127.0.0.1:<free port> in a thread (uvicorn); yields the base URL."""
    import uvicorn

    from job.serve import SearchService, create_app

    before = _snapshot(served_run)
    service = SearchService(str(served_run), device="cpu")
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, name="test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
        assert _snapshot(served_run) == before  # nothing was written to the run


def get(url: str, data: bytes | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


def get_json(url: str, data: bytes | None = None) -> tuple[int, Any]:
    status, ctype, body = get(url, data)
    assert ctype.startswith("application/json"), (status, ctype, body[:200])
    return status, json.loads(body)


def _meta(run: Path) -> list[dict[str, Any]]:
    cols = ["id", "channel", "location", "scene_name", "scene_description", "is_key_frame"]
    return pq.read_table(run / "embeddings.parquet", columns=cols).to_pylist()


# ------------------------------------------------------------------------------------------------ API


@pytest.mark.parametrize(("argv", "message"), [
    (["--run", "/nonexistent/run"], "holds no embeddings.parquet"),
    (["--run", "/nonexistent/run", "--port", "0"], "must be a positive integer"),
    (["--run", "/nonexistent/run", "--port", "70000"], "--port 70000 must be in 1..65535"),
])
def test_serve_command_bad_input_exits_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(["serve", *argv, "--log-level", "ERROR"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and message in err[0], err


def test_info_and_page(server: str, served_run: Path) -> None:
    status, info = get_json(f"{server}/api/info")
    n = len(_meta(served_run))
    assert status == 200 and info["images"] == n and info["has_map"] and info["thumbnails"] == "thumbnails.parquet"
    assert info["text_space"]["column"] == "embedding_cls" and info["text_space"]["source"].endswith("text.faiss")
    assert {"channel", "location", "night", "rain", "is_key_frame"} <= set(info["columns"])
    assert len(info["channels"]) == 6 and len(info["scenes"]) == 4
    status, ctype, body = get(f"{server}/")
    assert status == 200 and b"/static/app.js" in body and ctype.startswith("text/html")
    assert get(f"{server}/static/app.js")[0] == 200
    status, m = get_json(f"{server}/api/map")
    assert status == 200 and m["points"] == n and len(m["x"]) == len(m["y"]) == len(m["id"]) == n


def test_text_search_shape(server: str) -> None:
    status, doc = get_json(f"{server}/api/search?text=night%2C+rain&k=5")
    assert status == 200 and doc["space"] == "text" and doc["column"] == "embedding_cls" and doc["where"] is None
    hits = doc["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(isinstance(h["id"], str) and h["thumb"] == f"/api/thumb/{h['id']}" for h in hits)
    assert all({"score", "scene_name", "channel", "time", "x", "y", "path"} <= set(h) for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    status, ctype, jpeg = get(f"{server}{hits[0]['thumb']}")
    assert status == 200 and ctype == "image/jpeg" and jpeg[:2] == b"\xff\xd8"


@pytest.mark.parametrize(("params", "keep"), [
    ("channel=CAM_FRONT", lambda m: m["channel"] == "CAM_FRONT"),
    ("location=singapore&night=yes", lambda m: m["location"].startswith("singapore")
     and "night" in m["scene_description"].lower()),
    ("where=NOT+is_key_frame+AND+channel+LIKE+%27CAM_BACK%25%27", lambda m: not m["is_key_frame"]
     and m["channel"].startswith("CAM_BACK")),
    ("rain=no&channel=CAM_FRONT_LEFT,CAM_BACK", lambda m: "rain" not in m["scene_description"].lower()
     and m["channel"] in ("CAM_FRONT_LEFT", "CAM_BACK")),
])
def test_filters_are_honoured_and_fill_k(server: str, served_run: Path, params: str, keep: Any) -> None:
    matching = {str(m["id"]) for m in _meta(served_run) if keep(m)}
    assert 10 <= len(matching) < len(_meta(served_run))
    for query in ("text=a+bus", f"id={sorted(matching)[0]}"):
        status, doc = get_json(f"{server}/api/search?{query}&k=10&{params}")
        assert status == 200 and doc["matches"] == len(matching)
        assert len(doc["hits"]) == 10 and {h["id"] for h in doc["hits"]} <= matching
    status, doc = get_json(f"{server}/api/search?text=a+bus&k={len(_meta(served_run))}&{params}")
    assert {h["id"] for h in doc["hits"]} == matching  # k larger than the matches: every match, nothing else


def test_id_and_image_queries(server: str, served_run: Path) -> None:
    meta = _meta(served_run)
    target = str(meta[3]["id"])
    status, doc = get_json(f"{server}/api/search?id={target}&k=3")
    assert status == 200 and doc["space"] == "image" and doc["hits"][0]["id"] == target
    assert doc["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    path = pq.read_table(served_run / "embeddings.parquet", columns=["path"]).column("path")[3].as_py()
    source = json.loads((served_run / "manifest.json").read_text())["config"]["source"]["sources"][0]
    status, doc = get_json(f"{server}/api/search?k=3", data=(Path(source) / path).read_bytes())
    assert status == 200 and doc["hits"][0]["id"] == target and doc["hits"][0]["score"] > 0.999


@pytest.mark.parametrize(("url", "code", "message"), [
    ("/api/search?text=x&k=0", 400, "k=0 must be in 1.."),
    ("/api/search?text=x&k=ten", 400, "not an integer"),
    ("/api/search?k=3", 400, "exactly one of"),
    ("/api/search?text=x&id=1", 400, "exactly one of"),
    ("/api/search?text=x&where=colour+%3D+1", 400, "valid columns: id, path"),
    ("/api/search?text=x&where=channel+%3D", 400, "not a valid SQL condition"),
    ("/api/search?text=x&where=1%3D1)%3B+drop+view+meta%3B+--", 400, "SQL condition"),
    ("/api/search?text=x&where=id+IN+(SELECT+1+FROM+read_csv(%27%2Fetc%2Fpasswd%27))", 400, "disabled"),
    ("/api/search?text=x&channel=CAM_TOP", 400, "valid choices: CAM_FRONT"),
    ("/api/search?text=x&night=maybe", 400, "not a yes/no value"),
    ("/api/search?id=12", 404, "is not in"),  # NotFound, like a thumbnail of an unknown id
    ("/api/thumb/12", 404, "is not in"),
    ("/api/thumb/abc", 400, "not an integer"),
    ("/api/nothing", 404, "Not Found"),
])
def test_bad_requests_get_4xx_json_without_traceback(server: str, url: str, code: int, message: str) -> None:
    status, doc = get_json(server + url)
    assert status == code and message in doc["error"], doc
    assert "Traceback" not in doc["error"] and "\n" not in doc["error"]


def test_bad_image_upload(server: str) -> None:
    status, doc = get_json(f"{server}/api/search?k=3", data=b"not an image at all")
    assert status == 400 and "not an image" in doc["error"]
    status, doc = get_json(f"{server}/api/search?k=3", data=b"")
    assert status == 400


@pytest.mark.s3
def test_an_s3_run(served_run: Path, s3_bucket: str) -> None:
    """The same service over a run on s3:// (moto): filters, text and id queries, thumbnails, the map."""
    from job import fsutil
    from job.serve import SearchService

    fs, _ = fsutil.url_to_fs(f"s3://{s3_bucket}/")
    fs.put(str(served_run), f"{s3_bucket}/runs/r1", recursive=True)
    service = SearchService(f"s3://{s3_bucket}/runs/r1", device="cpu")
    assert service.info()["thumbnails"] == "thumbnails.parquet" and service.map_points()["points"] > 0
    doc = service.search(service.parse({"text": "a bus", "k": "5", "channel": "CAM_BACK"}))
    assert doc["space"] == "text" and len(doc["hits"]) == 5 and {h["channel"] for h in doc["hits"]} == {"CAM_BACK"}
    first = doc["hits"][0]["id"]
    assert service.search(service.parse({"id": first, "k": "1"}))["hits"][0]["id"] == first
    assert service.thumbnail(first)[:2] == b"\xff\xd8"


# ------------------------------------------------------------------------------------------------ browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium chromium-driver; .ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver or a browser
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1000", "--hide-scrollbars"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_state(driver: Any, state: str, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-state") in (state, "error"))
    assert driver.find_element("tag name", "body").get_attribute("data-state") == state, \
        driver.find_element("id", "status").text


def _search_and_wait(driver: Any, action: Any) -> dict[str, Any]:
    """Do ``action`` (which starts a query), wait for its results; returns the API's response."""
    count = driver.execute_script("return window.searchTimings.length")
    action()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return window.searchTimings.length") > count
                                    or d.find_element("tag name", "body").get_attribute("data-state") == "error")
    _wait_state(driver, "results")
    return driver.execute_script("return window.lastResponse")


def test_the_page_in_a_real_browser(server: str, served_run: Path, browser: Any) -> None:
    """A text query, a filter, a click on a hit; screenshots of each step under test-artifacts/serve/."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    meta = {str(m["id"]): m for m in _meta(served_run)}
    t0 = time.perf_counter()
    browser.get(server + "/")
    _wait_state(browser, "ready")
    ready_s = time.perf_counter() - t0
    assert "images" in browser.find_element(By.ID, "run-info").text
    browser.save_screenshot(str(ARTIFACTS / "1_ready.png"))

    # 1. a text query
    box = browser.find_element(By.ID, "text")
    box.send_keys("night, rain, intersection")
    doc = _search_and_wait(browser, lambda: browser.find_element(By.ID, "go").click())
    first_results_s = time.perf_counter() - t0
    cards = browser.find_elements(By.CSS_SELECTOR, "#grid .hit")
    assert doc["space"] == "text" and len(cards) == len(doc["hits"]) == 24
    assert "score" in cards[0].text and meta[doc["hits"][0]["id"]]["scene_name"] in cards[0].text
    assert browser.execute_script("return document.querySelector('#grid img').naturalWidth") > 0  # thumbnails load
    browser.save_screenshot(str(ARTIFACTS / "2_text_query.png"))

    # 2. filters: Singapore only, night only, one camera
    Select(browser.find_element(By.ID, "location")).select_by_value("singapore-onenorth")
    doc = _search_and_wait(browser, lambda: Select(browser.find_element(By.ID, "night")).select_by_value("yes"))
    assert doc["where"] and doc["hits"]
    for h in doc["hits"]:
        m = meta[h["id"]]
        assert m["location"] == "singapore-onenorth" and "night" in m["scene_description"].lower()
    assert len(doc["hits"]) == min(24, doc["matches"])
    assert f"among {doc['matches']}" in browser.find_element(By.ID, "status").text
    browser.save_screenshot(str(ARTIFACTS / "3_filtered.png"))

    # 3. click a hit: search by that image, inside the same filter
    second = browser.find_elements(By.CSS_SELECTOR, "#grid .hit")[1]
    clicked = second.get_attribute("data-id")
    doc = _search_and_wait(browser, second.click)
    assert doc["query"] == {"id": clicked} and doc["hits"][0]["id"] == clicked and doc["space"] == "image"
    assert "images like" in browser.find_element(By.ID, "query-shown").text
    browser.save_screenshot(str(ARTIFACTS / "4_clicked_hit.png"))

    # 4. a bad SQL filter shows its message on the page
    where = browser.find_element(By.ID, "where")
    where.send_keys("colour = 'red'\n")
    _wait_state(browser, "error")
    assert "valid columns" in browser.find_element(By.ID, "status").text
    timings = browser.execute_script("return window.searchTimings")
    (ARTIFACTS / "timings.json").write_text(json.dumps({
        "page_ready_s": round(ready_s, 3), "first_results_s_from_navigation": round(first_results_s, 3),
        "queries": timings}, indent=2))
