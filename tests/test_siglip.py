"""SigLIP 2 as a first-class model: its two poolings against the libraries' own code, its tokenizer from a local folder
(no hub), the errors, and ``job run`` → ``job search --text`` with random weights on the CPU."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import jpeg_bytes
from job.config import ModelConfig
from job.decode import decode_image
from job.errors import UsageError
from siglip_helpers import SIGLIP_MODEL, WORDS, hub_cache_with, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _needs_transformers() -> None:
    pytest.importorskip("transformers", reason="SigLIP's tokenizer needs transformers (requirements.lock: make setup)")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _needs_transformers()
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def siglip(tokenizer_dir: Path):
    from job.model.load import load_model

    return load_model(ModelConfig(model=SIGLIP_MODEL, pretrained="none", tokenizer=str(tokenizer_dir)))


def _batch(size: int, n: int = 3) -> np.ndarray:
    return np.stack([decode_image(jpeg_bytes(640, 360, seed=40 + s), size, "squash")[0] for s in range(n)])


def _normalised(lm, batch: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(lm.mean).view(1, 3, 1, 1)) / torch.tensor(lm.std).view(1, 3, 1, 1)


def _unit(t: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(t, dim=-1).numpy()


def test_siglip_mean_and_map_match_timm_and_open_clip(siglip) -> None:
    """``--pool mean`` keeping text vectors: one pass of the trunk gives the mean over patch tokens (= timm's own
    ``global_pool='avg'`` on the same trunk) and the attention-pool output (= open_clip's ``encode_image``)."""
    from job.model.load import ImageEncoder

    assert siglip.trained == "map" and siglip.pool == "mean" and siglip.image_size == 256 and siglip.embed_dim == 768
    assert siglip.text_column == "embedding_trained"
    batch = _batch(siglip.image_size)
    passes: list[int] = []
    hook = siglip.model.visual.trunk.blocks.register_forward_hook(lambda *_: passes.append(1))
    try:
        mean, trained = ImageEncoder(siglip, with_trained=True).encode(batch)
    finally:
        hook.remove()
    assert len(passes) == 1 and trained is not None and mean.shape == trained.shape == (3, 768)
    x = _normalised(siglip, batch)
    avg = copy.deepcopy(siglip.model.visual)
    avg.trunk.reset_classifier(0, global_pool="avg")  # timm's own mean pooling of this trunk (the MAP head removed)
    assert avg.trunk.attn_pool is None
    with torch.no_grad():
        np.testing.assert_allclose(trained, _unit(siglip.model.encode_image(x)), atol=1e-5)
        np.testing.assert_allclose(mean, _unit(avg(x)), atol=1e-5)
    np.testing.assert_allclose(ImageEncoder(siglip)(batch), mean, atol=1e-6)  # --pool mean alone: the same vectors
    as_map = dataclasses.replace(siglip, pool="map")  # --pool map: embedding is the trained output
    only, same = ImageEncoder(as_map, with_trained=True).encode(batch)
    assert same is only and as_map.text_column == "embedding"
    np.testing.assert_allclose(only, trained, atol=1e-6)
    assert float((mean * trained).sum(axis=1).max()) < 0.999  # two different vectors
    assert siglip.describe()["trained_pool"] == "map" and siglip.describe()["tokenizer"].startswith("dir:")


def test_siglip_text_tower_reads_the_folder_tokenizer(siglip) -> None:
    from job.model.load import encode_text

    tokens = siglip.tokenizer(["Night, rain: a BUS!", "zebra"])
    assert tokens.shape == (2, 64)  # SigLIP's context length, from the model's config
    ids = {w: i + 3 for i, w in enumerate(WORDS)}  # after <pad>, <eos>, <unk>
    # cleaned (punctuation gone), lower-cased, eos appended, padded; an unknown word is <unk>
    assert tokens[0, :5].tolist() == [ids["night"], ids["rain"], ids["a"], ids["bus"], 1]
    assert tokens[1, :3].tolist() == [2, 1, 0]
    t = encode_text(siglip, ["a road at night", "a bus"])
    assert t.shape == (2, 768) and np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)


def test_pool_choices_follow_the_model() -> None:
    """``cls`` on SigLIP (no CLS token) and ``map`` on CLIP (no attention pool) fail at once (from the model's config,
    before its tokenizer or weights load), naming the valid ones."""
    from job.model.load import load_model

    with pytest.raises(UsageError, match=r"--pool cls: model ViT-B-32-SigLIP2-256 has no CLS token .*valid choices "
                                         r"for it: mean, map"):
        load_model(ModelConfig(model=SIGLIP_MODEL, pretrained="none", pool="cls"))
    with pytest.raises(UsageError, match=r"--pool map: model ViT-S-32 has no attention-pool head; valid choices for "
                                         r"it: mean, cls"):
        load_model(ModelConfig(model="ViT-S-32", pretrained="none", pool="map"))


def test_text_vectors_old_spelling_still_loads() -> None:
    """Manifests written before SigLIP store ``text_vectors: cls``; it reads as ``trained``."""
    assert ModelConfig(text_vectors="cls").text_vectors == "trained"
    with pytest.raises(UsageError, match="--text-vectors .*valid choices: trained, none"):
        ModelConfig(text_vectors="mean")


def _run_py(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                               **env})


def test_tokenizer_folder_tokenizes_as_the_hub_copy(tokenizer_dir: Path, tmp_path: Path) -> None:
    """The same files as the hub's (an offline hub cache here) give the same tokens through ``--tokenizer DIR`` as
    through open_clip's own hub path: the folder is built with the model's context length and cleaning."""
    cache = hub_cache_with(tokenizer_dir, tmp_path / "hub", "timm/ViT-B-32-SigLIP2-256")
    code = ("import json, sys; from job.model.tokenizer import load_tokenizer\n"
            "texts = ['Night, rain: a BUS!', 'a dashcam image of a parked car.', 'zebra crossing']\n"
            "hub, where_hub = load_tokenizer('ViT-B-32-SigLIP2-256', None)\n"
            f"folder, where_dir = load_tokenizer('ViT-B-32-SigLIP2-256', {str(tokenizer_dir)!r})\n"
            "print(json.dumps([hub(texts).tolist(), folder(texts).tolist(), where_hub, where_dir]))")
    done = _run_py(code, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "JOB_TOKENIZER_DIR": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    hub, folder, where_hub, where_dir = json.loads(done.stdout.strip().splitlines()[-1])
    assert hub == folder and len(hub[0]) == 64
    assert where_hub == "hf-hub:timm/ViT-B-32-SigLIP2-256" and where_dir == f"dir:{tokenizer_dir}"
    # $JOB_TOKENIZER_DIR is honoured like --tokenizer
    code = ("from job.model.tokenizer import load_tokenizer\n"
            "print(load_tokenizer('ViT-B-32-SigLIP2-256', None)[1])")
    done = _run_py(code, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"),
                          "JOB_TOKENIZER_DIR": str(tokenizer_dir)})
    assert done.returncode == 0 and done.stdout.strip().endswith(f"dir:{tokenizer_dir}"), done.stderr[-2000:]


def test_without_transformers_siglip_says_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from job.model.tokenizer import load_tokenizer

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(UsageError, match=r"ViT-B-32-SigLIP2-256 tokenizes with the Hugging Face tokenizer "
                                         r"timm/ViT-B-32-SigLIP2-256: install the transformers package"):
        load_tokenizer(SIGLIP_MODEL, None)
    assert load_tokenizer("ViT-S-32", None)[1] == "open_clip"  # CLIP needs no transformers


def test_no_tokenizer_without_the_hub_is_one_line_exit_2(tmp_path: Path) -> None:
    """No hub and no folder: one line saying how to get the tokenizer, exit 2, nothing written (before the weights)."""
    _needs_transformers()
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg_bytes(320, 180, seed=1))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "job", "embed", "--image-dir", str(images), "--out", str(out), "--model", SIGLIP_MODEL,
         "--pretrained", "none", "--no-progress", "--workers", "0"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"), "JOB_TOKENIZER_DIR": "",
             "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "timm/ViT-B-32-SigLIP2-256" in errors[0] and "--tokenizer DIR" in errors[0]
    assert "JOB_TOKENIZER_DIR" in errors[0] and "hf download" in errors[0]
    assert not out.exists() or not any(out.iterdir())


def test_bad_tokenizer_folders(tmp_path: Path) -> None:
    from job.model.tokenizer import load_tokenizer

    _needs_transformers()
    with pytest.raises(UsageError, match="is not a folder"):
        load_tokenizer(SIGLIP_MODEL, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"no tokenizer could be loaded from it .*timm/ViT-B-32-SigLIP2-256"):
        load_tokenizer(SIGLIP_MODEL, str(tmp_path / "empty"))
    _, where = load_tokenizer("ViT-S-32", str(tmp_path / "empty"))  # CLIP's bundled vocabulary: the folder is unused
    assert where == "open_clip"


@pytest.fixture(scope="module")
def siglip_run(nuscenes_dataroot: Path, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from job.cli import main

    out = tmp_path_factory.mktemp("siglip") / "run"
    rc = main(["run", "--source", str(nuscenes_dataroot.root), "--out", str(out), "--model", SIGLIP_MODEL,
               "--pretrained", "none", "--tokenizer", str(tokenizer_dir), "--channels", "CAM_FRONT,CAM_BACK",
               "--min-positives", "3", "--no-project", "--no-progress", "--workers", "0", "--log-level", "WARNING"])
    assert rc == 0
    return out


def test_siglip2_run_then_search_by_text_then_eval(siglip_run: Path, tokenizer_dir: Path, capsys) -> None:
    """``job run`` with SigLIP 2 (random weights) stores both vectors, indexes the trained output for text queries,
    ``job search --text`` ranks by it, exactly, and ``job eval`` scores both vectors (its text queries through the
    SigLIP text tower and the run's tokenizer folder)."""
    import pyarrow.parquet as pq

    from job.cli import main
    from job.model.load import encode_text
    from job.search import Searcher

    manifest = json.loads((siglip_run / "manifest.json").read_text())
    assert manifest["model"]["name"] == SIGLIP_MODEL and manifest["model"]["trained_pool"] == "map"
    assert manifest["model"]["embed_dim"] == 768 and manifest["model"]["image_size"] == 256
    assert manifest["text_index"]["column"] == "embedding_trained"
    t = pq.read_table(siglip_run / "embeddings.parquet", columns=["id", "embedding", "embedding_trained"])
    assert t.num_rows == manifest["counts"]["embedded"] > 0
    text = "a road at night"
    os.environ.pop("JOB_TOKENIZER_DIR", None)
    # the run's tokenizer folder is found again on this machine (the manifest's config names it)
    s = Searcher.open(str(siglip_run), device="cpu")
    q = encode_text(s.model(), [text])[0]
    x = np.stack(t.column("embedding_trained").to_pylist())
    want = [t.column("id")[int(i)].as_py() for i in np.argsort(-(x @ q))[:5]]
    assert main(["search", "--run", str(siglip_run), "--text", text, "-k", "5", "--json", "--device", "cpu",
                 "--log-level", "WARNING"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["id"] for h in hits] == want
    # the eval step of job run scored both vectors, text tasks included; job eval scores the run again
    tasks = {(s["task"], s["column"]) for s in manifest["eval"]["scores"]}
    assert {("text", "embedding"), ("text", "embedding_trained"), ("image", "embedding"),
            ("image", "embedding_trained")} <= tasks
    assert not any(str(v).startswith("skipped") for v in manifest["eval"]["settings"].values())
    assert main(["eval", "--run", str(siglip_run), "--min-positives", "3", "--device", "cpu", "--no-progress",
                 "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    assert "MAP@100" in out and "embedding_trained" in out
    again = json.loads((siglip_run / "manifest.json").read_text())["eval"]
    assert {(s["task"], s["column"]) for s in again["scores"]} == tasks


@pytest.mark.slow
def test_real_vit_l_16_siglip2_256_architecture(tokenizer_dir: Path) -> None:
    """The SigLIP 2 model of the same cost as ViT-L/14: 1024-d, 256 px, both poolings from one pass on the CPU."""
    from job.model.load import ImageEncoder, load_model

    lm = load_model(ModelConfig(model="ViT-L-16-SigLIP2-256", pretrained="none", tokenizer=str(tokenizer_dir)))
    assert lm.trained == "map" and lm.embed_dim == 1024 and lm.image_size == 256
    assert sum(p.numel() for p in lm.model.visual.parameters()) > 300e6
    batch = _batch(256, n=1)
    mean, trained = ImageEncoder(lm, with_trained=True).encode(batch)
    assert trained is not None and mean.shape == trained.shape == (1, 1024)
    with torch.no_grad():
        np.testing.assert_allclose(trained, _unit(lm.model.encode_image(_normalised(lm, batch))), atol=1e-4)
