"""``job serve`` on a small real run: the JSON API over HTTP, and the page driven in a real headless Chromium.

The run is made once by ``python -m job run`` from the generated nuScenes fixture (4 scenes, keyframes and
sweeps, ViT-B-32 with seeded random weights at 64 px, thumbnails, index, text index, UMAP, and ``--curate
--select 12``: the fixture's two repeated scenes give 12 duplicate groups of 6, standing still and near). A copy
without its curation checks that an uncurated run keeps working and says how to curate it. The server runs
in a thread on 127.0.0.1 and a free port. The browser test uses the system's Chromium and chromedriver
(Debian: ``apt-get install chromium chromium-driver``; ``.ci/run`` installs them) and is skipped, saying
so, only where they are missing. Screenshots and timings go to ``test-artifacts/serve/``.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq
import pytest

from conftest import TEST_MODEL
from job.cli import main
from serve_helpers import (
    browser_or_skip,
    get,
    get_json,
    running,
    search_and_wait,
    snapshot,
    wait_state,
)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "serve"


@pytest.fixture(scope="module")
def served_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nuscenes_fixture import make_nuscenes_fixture

    base = tmp_path_factory.mktemp("serve")
    info = make_nuscenes_fixture(base / "nuscenes", n_logs=4, scenes_per_log=1, samples_per_scene=3,
                                 sweeps_per_sample=1, width=320, height=180)
    out = base / "run"
    rc = main(["run", "--source", str(info.root), "--out", str(out), *TEST_MODEL, "--image-size", "64",
               "--include-sweeps", "--thumbnails", "--n-epochs", "50", "--workers", "0", "--no-progress",
               "--log-level", "WARNING", "--curate", "--select", "12"])
    assert rc == 0
    assert (out / "index" / "text.faiss").exists() and (out / "umap2d.parquet").exists()
    assert (out / "curation" / "selection.parquet").exists()
    return out


@pytest.fixture(scope="module")
def server(served_run: Path) -> Iterator[str]:
    """The app over the curated run; yields the base URL."""
    from job.serve import SearchService

    before = snapshot(served_run)
    with running(SearchService(str(served_run), device="cpu")) as url:
        yield url
    assert snapshot(served_run) == before  # nothing was written to the run


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
    assert info["text_space"]["column"] == "embedding_trained" and info["text_space"]["source"].endswith("text.faiss")
    assert {"channel", "location", "night", "rain", "is_key_frame"} <= set(info["columns"])
    assert len(info["channels"]) == 6 and len(info["scenes"]) == 4
    status, ctype, body = get(f"{server}/")
    assert status == 200 and b"/static/app.js" in body and ctype.startswith("text/html")
    assert get(f"{server}/static/app.js")[0] == 200
    status, m = get_json(f"{server}/api/map")
    assert status == 200 and m["points"] == n and len(m["x"]) == len(m["y"]) == len(m["id"]) == n


def test_text_search_shape(server: str) -> None:
    status, doc = get_json(f"{server}/api/search?text=night%2C+rain&k=5")
    assert status == 200 and doc["space"] == "text" and doc["column"] == "embedding_trained" and doc["where"] is None
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
    ("/api/duplicates?id=12", 404, "is not in"),
    ("/api/duplicates", 400, "id='' is not an integer"),
    ("/api/duplicates?id=abc", 400, "not an integer"),
    ("/api/duplicates?id=1&limit=0", 400, "limit=0 must be in 1..1000"),
    ("/api/rare?k=0", 400, "k=0 must be in 1.."),
    ("/api/rare?offset=-1", 400, "offset=-1 must be in 0.."),
    ("/api/rare?where=colour+%3D+1", 400, "valid columns: id, path"),
    ("/api/rare?channel=CAM_TOP", 400, "valid choices: CAM_FRONT"),
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


# ------------------------------------------------------------------------------------------------ curation


def _curation(run: Path, name: str) -> list[dict[str, Any]]:
    return pq.read_table(run / "curation" / name).to_pylist()


def test_duplicates_api_shows_a_whole_group(server: str, served_run: Path) -> None:
    dups = _curation(served_run, "duplicates.parquet")
    threshold = json.loads((served_run / "manifest.json").read_text())["curation"]["threshold"]["cosine"]
    assert dups and {d["kind"] for d in dups} == {"still", "near"}
    member = dups[len(dups) // 2]
    root = str(member["keep_id"])  # the fixture has no exact copies: no chains, keep_id is the group's root
    expected = {str(d["id"]): d for d in dups if d["keep_id"] == member["keep_id"]}
    for asked in (str(member["id"]), root):  # a member and the kept image give the same group
        status, doc = get_json(f"{server}/api/duplicates?id={asked}")
        assert status == 200 and doc["id"] == asked and doc["root"] == root
        assert doc["size"] == doc["shown"] == len(expected) + 1 == len(doc["members"])
        kept, *rest = doc["members"]
        assert kept["id"] == root and kept["role"] == "kept" and kept["kind"] is None
        assert {m["id"] for m in rest} == set(expected) and all(m["role"] == "repeats" for m in rest)
        for m in rest:
            assert m["kind"] == expected[m["id"]]["kind"] and m["keep_id"] == root
            assert m["cosine"] == pytest.approx(expected[m["id"]]["cosine"], abs=1e-6) and m["cosine"] >= threshold
            assert m["thumb"] == f"/api/thumb/{m['id']}" and {"x", "y", "time", "channel"} <= set(m)
        assert [m["time"] for m in rest] == sorted(m["time"] for m in rest)  # in time order
        assert doc["by_kind"] == {expected[next(iter(expected))]["kind"]: len(expected)}
    status, doc = get_json(f"{server}/api/duplicates?id={member['id']}&limit=3")
    assert status == 200 and doc["size"] == len(expected) + 1 and doc["shown"] == len(doc["members"]) == 3
    in_groups = {str(d["id"]) for d in dups} | {str(d["keep_id"]) for d in dups}
    alone = next(str(m["id"]) for m in _meta(served_run) if str(m["id"]) not in in_groups)
    status, doc = get_json(f"{server}/api/duplicates?id={alone}")
    assert status == 200 and doc["size"] == 1 and [m["id"] for m in doc["members"]] == [alone]


def test_rare_is_uniqueness_descending_inside_the_filters(server: str, served_run: Path) -> None:
    scores = {str(r["id"]): r["uniqueness"] for r in _curation(served_run, "scores.parquet")}
    ranked = sorted(scores, key=lambda i: (-scores[i], int(i)))
    status, doc = get_json(f"{server}/api/rare?k=10")
    assert status == 200 and doc["matches"] == len(scores) and doc["where"] is None
    assert [h["id"] for h in doc["hits"]] == ranked[:10] and [h["rank"] for h in doc["hits"]] == list(range(1, 11))
    assert [h["score"] for h in doc["hits"]] == pytest.approx([scores[i] for i in ranked[:10]], abs=1e-6)
    status, page2 = get_json(f"{server}/api/rare?k=10&offset=10")
    assert [h["id"] for h in page2["hits"]] == ranked[10:20] and page2["hits"][0]["rank"] == 11
    meta = {str(m["id"]): m for m in _meta(served_run)}
    keep = [i for i in ranked if meta[i]["channel"] == "CAM_FRONT" and meta[i]["location"].startswith("singapore")]
    status, doc = get_json(f"{server}/api/rare?k=5&channel=CAM_FRONT&location=singapore")
    assert status == 200 and doc["matches"] == len(keep) and [h["id"] for h in doc["hits"]] == keep[:5]
    assert doc["where"] and all(h["curation"]["uniqueness"] == pytest.approx(h["score"], abs=1e-4) for h in doc["hits"])


def test_the_subset_on_the_map_and_badges_on_hits(server: str, served_run: Path) -> None:
    picks = _curation(served_run, "selection.parquet")
    status, m = get_json(f"{server}/api/map")
    assert status == 200 and len(m["selected"]) == len(picks) == 12
    rank_of = {str(p["id"]): p["rank"] for p in picks}
    assert {m["id"][i]: r for i, r in zip(m["selected"], m["selected_rank"])} == rank_of
    status, sel = get_json(f"{server}/api/selection")
    assert status == 200 and sel["n"] == 12 and [p["rank"] for p in sel["picks"]] == list(range(12))
    assert [p["id"] for p in sel["picks"]] == [str(p["id"]) for p in picks]
    assert sel["picks"][0]["coverage_cosine"] is None and all(p["coverage_cosine"] < 1 for p in sel["picks"][1:])
    status, info = get_json(f"{server}/api/info")
    c = info["curation"]
    assert c["duplicates"] == len(_curation(served_run, "duplicates.parquet")) and c["groups"] == 12
    assert c["selection"] == 12 and c["rule"].startswith("auto:") and c["by_kind"] == {"near": 30, "still": 30}
    first = sel["picks"][0]["id"]
    status, doc = get_json(f"{server}/api/search?id={first}&k=3")
    assert doc["hits"][0]["curation"] == {"group": 1, "kind": None, "keep_id": None, "pick": 0,
                                          "uniqueness": pytest.approx(doc["hits"][0]["curation"]["uniqueness"])}
    dup = _curation(served_run, "duplicates.parquet")[0]
    status, doc = get_json(f"{server}/api/search?id={dup['id']}&k=1")
    badge = doc["hits"][0]["curation"]
    assert badge["kind"] == dup["kind"] and badge["keep_id"] == str(dup["keep_id"]) and badge["group"] == 6


def test_a_run_without_curation_keeps_working(served_run: Path, tmp_path: Path) -> None:
    from job.serve import SearchService

    plain = tmp_path / "plain"
    shutil.copytree(served_run, plain, ignore=shutil.ignore_patterns("curation"))
    with running(SearchService(str(plain), device="cpu", preload_model=False)) as url:
        status, info = get_json(f"{url}/api/info")
        assert status == 200 and info["curation"] is None
        assert info["curate_hint"] == f"python -m job curate --run {plain} --select N"
        first = str(_meta(plain)[0]["id"])
        status, doc = get_json(f"{url}/api/search?id={first}&k=3")
        assert status == 200 and len(doc["hits"]) == 3 and "curation" not in doc["hits"][0]
        status, m = get_json(f"{url}/api/map")
        assert status == 200 and m["selected"] == [] and len(m["x"]) == len(_meta(plain))
        for route in (f"duplicates?id={first}", "rare?k=3", "selection"):
            status, doc = get_json(f"{url}/api/{route}")
            assert status == 404 and "not curated" in doc["error"] and "python -m job curate --run" in doc["error"]


def test_group_roots_follow_chains() -> None:
    """An exact copy of a frame that itself stood still belongs to the standstill's group (job.curate.duplicates)."""
    import numpy as np

    from job.curate import duplicate_roots

    ids = np.array([5, 7, 9, 11], np.int64)  # 5 -> 7 (exact), 7 -> 3 (still), 9 -> 3 (still), 11 -> 2 (near)
    keep = np.array([7, 3, 3, 2], np.int64)
    assert duplicate_roots(ids, keep).tolist() == [3, 3, 3, 2]
    assert duplicate_roots(ids[::-1], keep[::-1]).tolist() == [2, 3, 3, 3]
    assert duplicate_roots(np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []


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
    with browser_or_skip() as driver:
        yield driver


def test_the_page_in_a_real_browser(server: str, served_run: Path, browser: Any) -> None:
    """A text query, a filter, a click on a hit; screenshots of each step under test-artifacts/serve/."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    meta = {str(m["id"]): m for m in _meta(served_run)}
    t0 = time.perf_counter()
    browser.get(server + "/")
    wait_state(browser, "ready")
    ready_s = time.perf_counter() - t0
    assert "images" in browser.find_element(By.ID, "run-info").text
    browser.save_screenshot(str(ARTIFACTS / "1_ready.png"))

    # 1. a text query
    box = browser.find_element(By.ID, "text")
    box.send_keys("night, rain, intersection")
    doc = search_and_wait(browser, lambda: browser.find_element(By.ID, "go").click())
    first_results_s = time.perf_counter() - t0
    cards = browser.find_elements(By.CSS_SELECTOR, "#grid .hit")
    assert doc["space"] == "text" and len(cards) == len(doc["hits"]) == 24
    assert "score" in cards[0].text and meta[doc["hits"][0]["id"]]["scene_name"] in cards[0].text
    assert browser.execute_script("return document.querySelector('#grid img').naturalWidth") > 0  # thumbnails load
    browser.save_screenshot(str(ARTIFACTS / "2_text_query.png"))

    # 2. filters: Singapore only, night only, one camera
    Select(browser.find_element(By.ID, "location")).select_by_value("singapore-onenorth")
    doc = search_and_wait(browser, lambda: Select(browser.find_element(By.ID, "night")).select_by_value("yes"))
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
    doc = search_and_wait(browser, second.click)
    assert doc["query"] == {"id": clicked} and doc["hits"][0]["id"] == clicked and doc["space"] == "image"
    assert "images like" in browser.find_element(By.ID, "query-shown").text
    browser.save_screenshot(str(ARTIFACTS / "4_clicked_hit.png"))

    # 4. a bad SQL filter shows its message on the page
    where = browser.find_element(By.ID, "where")
    where.send_keys("colour = 'red'\n")
    wait_state(browser, "error")
    assert "valid columns" in browser.find_element(By.ID, "status").text
    timings = browser.execute_script("return window.searchTimings")
    (ARTIFACTS / "timings.json").write_text(json.dumps({
        "page_ready_s": round(ready_s, 3), "first_results_s_from_navigation": round(first_results_s, 3),
        "queries": timings}, indent=2))


def test_curation_views_in_a_real_browser(server: str, served_run: Path, browser: Any) -> None:
    """Rarest first and its pages, a hit's duplicate group in the dialog (screenshot), a click on a member, and the
    subset toggled on the map."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    scores = {str(r["id"]): r["uniqueness"] for r in _curation(served_run, "scores.parquet")}
    ranked = sorted(scores, key=lambda i: (-scores[i], int(i)))
    browser.get(server + "/")
    wait_state(browser, "ready")
    assert browser.find_element(By.ID, "curation-info").text.startswith("Curated: 60 of 144 images repeat another")

    # 1. rarest first, then its second page
    doc = search_and_wait(browser, lambda: browser.find_element(By.ID, "rare").click())
    assert [h["id"] for h in doc["hits"]] == ranked[:24]
    assert browser.find_element(By.ID, "page-note").text.startswith("1–24 of 144")
    assert "uniqueness" in browser.find_element(By.CSS_SELECTOR, "#grid .hit .score").text
    browser.save_screenshot(str(ARTIFACTS / "5_rarest_first.png"))
    doc = search_and_wait(browser, lambda: browser.find_element(By.ID, "next").click())
    assert doc["offset"] == 24 and [h["id"] for h in doc["hits"]] == ranked[24:48]

    # 2. every image on one page; open the duplicates of a frame taken while the car stood still
    k_box = browser.find_element(By.ID, "k")
    doc = search_and_wait(browser, lambda: browser.execute_script(
        "arguments[0].value = '144'; arguments[0].dispatchEvent(new Event('change'))", k_box))
    assert doc["offset"] == 0 and len(doc["hits"]) == 144
    at = next(i for i, h in enumerate(doc["hits"]) if h["curation"]["kind"] == "still")
    card = browser.find_elements(By.CSS_SELECTOR, "#grid .hit")[at]
    assert card.find_element(By.CSS_SELECTOR, ".badge.kind-still").text == "still"
    card.find_element(By.CSS_SELECTOR, ".dup-btn").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element("tag name", "body").get_attribute("data-dup")
                                     in ("open", "error"))
    group = browser.execute_script("return window.lastGroup")
    assert browser.find_element("tag name", "body").get_attribute("data-dup") == "open"
    assert browser.find_element(By.ID, "dup-dialog").is_displayed()
    assert group["id"] == doc["hits"][at]["id"] and group["size"] == 6 and group["by_kind"] == {"still": 5}
    shown = browser.find_elements(By.CSS_SELECTOR, "#dup-grid .hit")
    assert [c.get_attribute("data-id") for c in shown] == [m["id"] for m in group["members"]]
    assert shown[0].find_element(By.CSS_SELECTOR, ".badge.kept").text == "kept"
    assert all(c.find_element(By.CSS_SELECTOR, ".badge.kind-still").text == "still" for c in shown[1:])
    assert browser.find_element(By.ID, "dup-title").text == "Duplicate group: 6 images"
    assert all(browser.execute_script("return arguments[0].querySelector('img').naturalWidth", c) > 0 for c in shown)
    browser.save_screenshot(str(ARTIFACTS / "6_duplicates.png"))

    # 3. a member of the group: the dialog closes and the page searches by it
    member = shown[3].get_attribute("data-id")
    doc = search_and_wait(browser, shown[3].click)
    assert doc["query"] == {"id": member} and doc["hits"][0]["id"] == member
    assert not browser.find_element(By.ID, "dup-dialog").is_displayed()

    # 4. the subset on the map, off and on again
    canvas = browser.find_element(By.ID, "map")
    with_subset = browser.execute_script("return arguments[0].toDataURL()", canvas)
    browser.find_element(By.ID, "show-selection").click()
    assert browser.execute_script("return arguments[0].toDataURL()", canvas) != with_subset
    browser.find_element(By.ID, "show-selection").click()
    assert browser.execute_script("return arguments[0].toDataURL()", canvas) == with_subset
