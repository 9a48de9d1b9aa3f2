"""The config sections keep what their parsers return: what a stage reads is what was checked."""
from __future__ import annotations

import pytest

from job.config import CurateConfig, IndexOverrides, SearchConfig, SourceConfig
from job.errors import UsageError
from job.values import CAMERA_CHANNELS


def test_source_config_stores_parsed_values() -> None:
    cfg = SourceConfig(sources=["runs/a"], channels=("cam_front",), scenes="scene-0061, scene-0103", shard="1/4")
    assert cfg.channels == ("CAM_FRONT",)  # was kept as 'cam_front' and then selected nothing
    assert cfg.sources == ("runs/a",) and cfg.scenes == ("scene-0061", "scene-0103") and cfg.shard == (1, 4)
    assert SourceConfig(channels="cam_back,CAM_FRONT").channels == ("CAM_BACK", "CAM_FRONT")
    assert SourceConfig().channels == CAMERA_CHANNELS and SourceConfig(shard=(0, 2)).shard == (0, 2)
    with pytest.raises(UsageError, match="'LIDAR_TOP' is not a camera"):
        SourceConfig(channels=("lidar_top",))
    with pytest.raises(UsageError, match="no camera channel selected"):
        SourceConfig(channels=())


def test_search_config_stores_parsed_values() -> None:
    cfg = SearchConfig(channels=("cam_front, cam_back",), locations="singapore", scenes=("scene-1",),
                       search_params=" efSearch = 64 ", where="  night  ")
    assert cfg.channels == ("CAM_FRONT", "CAM_BACK") and cfg.locations == ("singapore",) and cfg.scenes == ("scene-1",)
    assert cfg.search_params == "efSearch=64" and cfg.where == "night"
    assert IndexOverrides(search_params="nprobe=32, k_factor=8").search_params == "nprobe=32,k_factor=8"
    with pytest.raises(UsageError, match="is not NAME=INT"):
        SearchConfig(search_params="efSearch=fast")


def test_curate_config_stores_parsed_values() -> None:
    cfg = CurateConfig(still_metres="0.25", near_threshold="0.97", select=5, balance=("location, channel",))
    assert cfg.still_metres == 0.25 and cfg.near_threshold == 0.97 and cfg.balance == ("location", "channel")


def test_curate_config_checks_the_still_rule_and_uniqueness_at_parse_time() -> None:
    cfg = CurateConfig(still_cosine="0.95", still_gap_s="2", uniqueness="fiftyone", uniqueness_weights="0.5, 0.3,0.2")
    assert cfg.still_cosine == 0.95 and cfg.still_gap_s == 2.0 and cfg.uniqueness_weights == (0.5, 0.3, 0.2)
    assert CurateConfig().k == 10 and CurateConfig().uniqueness_weights == (0.6, 0.3, 0.1)
    for bad, message in [({"k": 1}, "--k 1 must be 4 or more"), ({"k": 3}, "--k 3 must be 4 or more"),
                         ({"still_cosine": 1.5}, "--still-cosine 1.5 is outside"),
                         ({"still_gap_s": 0}, "--still-gap-s 0 is out of range"),
                         ({"uniqueness": "lightly"}, "unknown uniqueness 'lightly'; valid choices: kept, fiftyone"),
                         ({"uniqueness_weights": "0.6,-1"}, "--uniqueness-weights '-1' is out of range"),
                         ({"uniqueness_weights": ""}, "--uniqueness-weights is empty"),
                         ({"k": 4, "uniqueness": "fiftyone", "uniqueness_weights": (0.5, 0.3, 0.1, 0.1)},
                          "reads 5 neighbours; --k 4 is too few")]:
        with pytest.raises(UsageError, match=message):
            CurateConfig(**bad)
