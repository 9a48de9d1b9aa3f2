"""``job compare``: two small variants on the test nuScenes data write their run folders, one table (JSON and
markdown) and one PNG; a second call resumes (nothing embedded again); bad variants are one line, exit 2, nothing
written; the variant grammar."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from job.cli import main
from job.config import CompareConfig, Variant
from job.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
SMALL_A = "model=ViT-S-32,pretrained=none,resize=pad,size=64"
SMALL_B = "model=ViT-S-32,pretrained=none,pool=cls,resize=crop,size=96,name=s32-cls-crop"
COMMON = ["--min-positives", "3", "--image-queries", "5", "--workers", "0", "--no-progress", "--log-level", "WARNING"]


def test_variant_grammar() -> None:
    v = Variant.parse("model=ViT-L-14, pretrained=datacomp_xl_s13b_b90k,pool=cls,resize=crop,size=224")
    assert (v.model, v.pretrained, v.pool, v.resize, v.size) == ("ViT-L-14", "datacomp_xl_s13b_b90k", "cls", "crop", 224)
    assert v.label == "ViT-L-14_datacomp_xl_s13b_b90k_cls_crop_224" and Variant.parse(v.spec()) == v
    d = Variant.parse("model=ViT-B-32-SigLIP2-256")  # every other key: job run's defaults
    assert (d.pretrained, d.pool, d.resize, d.size, d.label) == (
        "openclip", "mean", "pad", None, "ViT-B-32-SigLIP2-256_openclip_mean_pad_native")
    assert Variant.parse(d.spec()) == d
    for text, message in [("model=ViT-S-32,colour=red", r"unknown key 'colour'; valid keys: model, pretrained, pool, "
                                                         r"resize, size, name"),
                          ("pool=max", r"--variant 'pool=max': unknown pool 'max'; valid choices: mean, cls, map"),
                          ("resize=fit", r"unknown resize mode 'fit'; valid choices: pad, crop, squash"),
                          ("size=big", r"size='big' is not an integer"), ("size=8", r"size=8 must be in 16..4096"),
                          ("model=", r"model needs a value"), ("model=a,model=b", r"model given twice"),
                          ("", r"empty; write key=value pairs"), ("name=../x", r"variant name '../x'")]:
        with pytest.raises(UsageError, match=message):
            Variant.parse(text)
    with pytest.raises(UsageError, match=r"two variants would share the run folder 'ViT-S-32_none_mean_pad_64'"):
        CompareConfig(variants=("model=ViT-S-32,pretrained=none,size=64", "size=64,pretrained=none,model=ViT-S-32"))


@pytest.fixture(scope="module")
def compared(nuscenes_dataroot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "cmp"
    assert main(["compare", "--source", str(nuscenes_dataroot.root), "--out", str(out), "--variant", SMALL_A,
                 "--variant", SMALL_B, *COMMON]) == 0
    return out


def test_compare_writes_one_table_and_one_png(compared: Path, nuscenes_dataroot) -> None:
    doc = json.loads((compared / "compare.json").read_text())
    labels = [v["label"] for v in doc["variants"]]
    assert labels == ["ViT-S-32_none_mean_pad_64", "s32-cls-crop"]
    a, b = doc["variants"]
    assert (a["pool"], a["trained_pool"], a["resize"], a["image_size"]) == ("mean", "cls", "pad", 64)
    assert (b["pool"], b["resize"], b["image_size"]) == ("cls", "crop", 96)
    assert a["embedded"] == b["embedded"] == a["scored_images"] == len(nuscenes_dataroot.keyframes)
    # a --pool mean run scores both of its vectors; a --pool cls run has one (its embedding is the CLS token)
    assert {(s["task"], s["vector"]) for s in a["scores"]} == {
        (t, vec) for t in ("text", "image", "scene", "ego") for vec in ("mean", "cls")}
    assert {s["vector"] for s in b["scores"]} == {"cls"} and doc["tasks"] == ["text", "image", "scene", "ego"]
    for v in doc["variants"]:
        assert v["images_per_s"] > 0 and v["model_compute_s"] is not None and not v["resumed"]
        for s in v["scores"]:
            assert 0.0 <= s["map_at_100"] <= 1.0 and 0.0 <= s["chance_map_at_100"] <= 1.0 and s["queries"] > 0
        manifest = json.loads((compared / v["label"] / "manifest.json").read_text())  # a real run folder, scored
        assert manifest["eval"]["scores"] and (compared / v["label"] / "eval" / "per_query.parquet").exists()
        assert manifest["index"] is not None and manifest["projection"] is None
    best = doc["best"]["image"]
    assert best["map_at_100"] == max(s["map_at_100"] for v in doc["variants"] for s in v["scores"]
                                     if s["task"] == "image")
    # the labels were derived once, in the first variant's folder, and given to both with their provenance
    first = json.loads((compared / labels[0] / "eval" / "eval.json").read_text())
    second = json.loads((compared / labels[1] / "eval" / "eval.json").read_text())
    assert first["labels"]["given"] is second["labels"]["given"] is True
    assert first["labels"]["version"] == second["labels"]["version"] == "v1.0-mini"
    assert second["labels"]["min_visibility"] == 2
    assert (compared / labels[0] / "eval" / "labels.parquet").read_bytes() == \
        (compared / labels[1] / "eval" / "labels.parquet").read_bytes()
    md = (compared / "compare.md").read_text()
    assert "| variant | vector | text MAP@100 | image MAP@100 | scene MAP@100 | ego MAP@100 |" in md
    assert "| `s32-cls-crop` | cls |" in md and "| random ranking |" in md and "**" in md
    png = Image.open(compared / "compare.png")
    assert png.format == "PNG" and png.width > 600 and png.height > 200


def test_compare_again_resumes_without_embedding(compared: Path, nuscenes_dataroot, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "cmp"
    shutil.copytree(compared, out)
    parts = sorted(p.name for p in (out / "s32-cls-crop" / "embeddings.parquet").iterdir())
    assert main(["compare", "--source", str(nuscenes_dataroot.root), "--out", str(out), "--variant", SMALL_A,
                 "--variant", SMALL_B, *COMMON]) == 0
    doc = json.loads((out / "compare.json").read_text())
    assert [v["resumed"] for v in doc["variants"]] == [True, True]
    assert sorted(p.name for p in (out / "s32-cls-crop" / "embeddings.parquet").iterdir()) == parts
    before = json.loads((compared / "compare.json").read_text())
    assert [v["scores"] for v in doc["variants"]] == [v["scores"] for v in before["variants"]]  # same scores
    # a folder made with other options is refused, naming what differs
    assert main(["compare", "--source", str(nuscenes_dataroot.root), "--out", str(out), "--variant",
                 SMALL_B.replace("size=96", "size=128"), *COMMON]) == 2


@pytest.mark.parametrize(("variant", "says"), [
    ("model=ViT-S-32,colour=red", "unknown key 'colour'; valid keys: model, pretrained, pool, resize, size, name"),
    ("model=ViT-Q-99", "unknown model 'ViT-Q-99'"),
    ("model=ViT-S-32,pretrained=none,pool=map", "--pool map: model ViT-S-32 has no attention-pool head"),
])
def test_bad_variant_is_one_line_exit_2_nothing_written(tmp_path: Path, variant: str, says: str) -> None:
    out = tmp_path / "cmp"
    images = tmp_path / "images"
    images.mkdir()
    done = subprocess.run([sys.executable, "-m", "job", "compare", "--source", str(images), "--out", str(out),
                           "--variant", "model=ViT-S-32,pretrained=none", "--variant", variant, "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert not out.exists()
