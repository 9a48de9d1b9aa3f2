"""Model stage: registry and errors, weight sources, pooling, fidelity against open_clip's own pipeline."""
from __future__ import annotations

import io

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from conftest import jpeg_bytes
from job.config import ModelConfig
from job.errors import UsageError
from job.decode import decode_image
from job.model import DEFAULT_TAGS, resolve_model_name, resolve_pretrained
from job.model.load import ImageEncoder, encode_text, load_model

SMALL = dict(model="ViT-S-32", pretrained="none")


@pytest.fixture(scope="module")
def small() -> object:
    return load_model(ModelConfig(**SMALL))


@pytest.mark.parametrize(("name", "expected"), [("vit_l_14", "ViT-L-14"), ("ViT-L/14", "ViT-L-14"),
                                                ("ViT-B-32", "ViT-B-32"), ("VIT_B_32", "ViT-B-32")])
def test_model_aliases(name: str, expected: str) -> None:
    assert resolve_model_name(name) == expected


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(UsageError, match=r"unknown model .ViT-Q-99.; valid choices: .*vit_l_14.*ViT-L-14.*python -m job models"):
        resolve_model_name("ViT-Q-99")


def test_pretrained_kinds(tmp_path) -> None:
    assert resolve_pretrained("ViT-L-14", "openclip").value == DEFAULT_TAGS["ViT-L-14"]
    assert DEFAULT_TAGS["ViT-L-14"] in open_clip.list_pretrained_tags_by_model("ViT-L-14")
    assert resolve_pretrained("ViT-L-14", "laion2b_s32b_b82k").kind == "tag"
    assert resolve_pretrained("ViT-L-14", "none").kind == "none"
    assert resolve_pretrained("ViT-L-14", "hf-hub:laion/CLIP-ViT-L-14-laion2B-s32B-b82K").kind == "hf-hub"
    assert resolve_pretrained("ViT-L-14", "s3://bucket/ckpt.pt").kind == "url"
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    assert resolve_pretrained("ViT-L-14", str(ckpt)).kind == "file"
    with pytest.raises(UsageError, match=r"unknown pretrained tag 'laion9000' for ViT-L-14; valid choices: .*openai"):
        resolve_pretrained("ViT-L-14", "laion9000")
    with pytest.raises(UsageError, match="does not exist"):
        resolve_pretrained("ViT-L-14", str(tmp_path / "missing.pt"))


def test_random_init_is_seeded(small) -> None:
    again = load_model(ModelConfig(**SMALL))
    assert again.weights_sha256 == small.weights_sha256
    other = load_model(ModelConfig(**SMALL, seed=1))
    assert other.weights_sha256 != small.weights_sha256


def test_checkpoint_file_round_trip(small, tmp_path) -> None:
    """A state dict saved to a file loads to the same weights (open_clip's local-file path)."""
    model = open_clip.create_model("ViT-S-32", pretrained=None)
    torch.nn.init.normal_(model.visual.proj, std=0.05)
    ckpt = tmp_path / "s32.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    lm = load_model(ModelConfig(model="ViT-S-32", pretrained=str(ckpt)))
    assert lm.weights.kind == "file"
    assert torch.equal(lm.model.visual.proj, model.visual.proj)
    assert lm.weights_sha256 != small.weights_sha256


@pytest.mark.s3
def test_checkpoint_from_s3(s3_bucket, tmp_path) -> None:
    import boto3

    model = open_clip.create_model("ViT-S-32", pretrained=None)
    local = tmp_path / "s32.pt"
    torch.save(model.state_dict(), local)
    boto3.client("s3").upload_file(str(local), s3_bucket, "weights/s32.pt")
    lm = load_model(ModelConfig(model="ViT-S-32", pretrained=f"s3://{s3_bucket}/weights/s32.pt",
                                cache_dir=str(tmp_path / "cache")))
    assert lm.weights.kind == "url"
    assert torch.equal(lm.model.visual.proj, model.visual.proj)
    with pytest.raises(UsageError, match="does not exist"):
        load_model(ModelConfig(model="ViT-S-32", pretrained=f"s3://{s3_bucket}/weights/nope.pt",
                               cache_dir=str(tmp_path / "cache")))


def test_broken_checkpoint_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="could not load weights file:"):
        load_model(ModelConfig(model="ViT-S-32", pretrained=str(bad)))


def _manual_pool(model: torch.nn.Module, x: torch.Tensor, pool: str) -> torch.Tensor:
    v = model.visual
    tokens = v.transformer(v._embeds(x))
    tokens = v.ln_post(tokens)
    pooled = tokens[:, 1:].mean(dim=1) if pool == "mean" else tokens[:, 0]
    return torch.nn.functional.normalize(pooled @ v.proj, dim=-1)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_pooling_matches_manual_computation(pool: str) -> None:
    lm = load_model(ModelConfig(**SMALL, pool=pool))
    batch = np.stack([decode_image(jpeg_bytes(640, 360, seed=s), 224, "pad")[0] for s in range(3)])
    ours = ImageEncoder(lm)(batch)
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(lm.mean).view(1, 3, 1, 1)) / torch.tensor(lm.std).view(1, 3, 1, 1)
    with torch.no_grad():
        manual = _manual_pool(lm.model, x, pool).numpy()
    np.testing.assert_allclose(ours, manual, atol=1e-5)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_mean_and_cls_from_one_forward_pass(small) -> None:
    """``with_trained``: the mean-pooled image vector and the CLS vector, both as open_clip computes them, one tower pass."""
    batch = np.stack([decode_image(jpeg_bytes(640, 360, seed=s), 224, "pad")[0] for s in range(3)])
    passes: list[int] = []
    hook = small.model.visual.transformer.register_forward_hook(lambda *_: passes.append(1))
    try:
        image, cls = ImageEncoder(small, with_trained=True).encode(batch)
    finally:
        hook.remove()
    assert len(passes) == 1 and cls is not None
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(small.mean).view(1, 3, 1, 1)) / torch.tensor(small.std).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(image, _manual_pool(small.model, x, "mean").numpy(), atol=1e-5)
        np.testing.assert_allclose(cls, _manual_pool(small.model, x, "cls").numpy(), atol=1e-5)
    np.testing.assert_allclose(image, ImageEncoder(small)(batch), atol=1e-6)  # the image vectors do not change
    assert np.allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-5)
    cls_model = load_model(ModelConfig(**SMALL, pool="cls"))
    only, same = ImageEncoder(cls_model, with_trained=True).encode(batch)  # --pool cls: embedding serves both
    assert same is only and only.shape == (3, small.embed_dim)
    assert small.text_column == "embedding_trained" and cls_model.text_column == "embedding"
    assert load_model(ModelConfig(**SMALL, text_vectors="none")).text_column is None


def test_text_vectors_fidelity_end_to_end(image_dir, tmp_path) -> None:
    """Same weights: ``embedding_trained`` of a --pool mean run equals ``embedding`` of a --pool cls run (cosine >= 0.9999)."""
    import pyarrow.parquet as pq

    from job.cli import main

    common = ["--image-dir", str(image_dir), "--model", "ViT-S-32", "--pretrained", "none", "--workers", "0",
              "--no-progress", "--log-level", "WARNING"]
    assert main(["embed", *common, "--out", str(tmp_path / "mean.parquet")]) == 0
    assert main(["embed", *common, "--pool", "cls", "--out", str(tmp_path / "cls.parquet")]) == 0
    assert main(["embed", *common, "--text-vectors", "none", "--out", str(tmp_path / "plain.parquet")]) == 0
    mean = pq.read_table(tmp_path / "mean.parquet").sort_by("id")
    cls = pq.read_table(tmp_path / "cls.parquet").sort_by("id")
    assert mean.schema.field("embedding_trained").type == mean.schema.field("embedding").type  # same dtype and size
    assert "embedding_trained" not in cls.column_names
    assert "embedding_trained" not in pq.read_table(tmp_path / "plain.parquet").column_names
    a = np.stack(mean.column("embedding_trained").to_pylist())
    b = np.stack(cls.column("embedding").to_pylist())
    assert mean.column("id").to_pylist() == cls.column("id").to_pylist() and len(a) == 12
    assert (a * b).sum(axis=1).min() >= 0.9999
    assert float((np.stack(mean.column("embedding").to_pylist()) * b).sum(axis=1).max()) < 0.999  # mean differs
    # a resumed run must keep the same choice: the column is part of the run's identity
    assert main(["embed", *common, "--text-vectors", "none", "--out", str(tmp_path / "mean.parquet")]) == 2


def test_mean_and_cls_differ(small) -> None:
    cls = load_model(ModelConfig(**SMALL, pool="cls"))
    batch = decode_image(jpeg_bytes(640, 360, seed=9), 224, "pad")[0][None]
    assert float((ImageEncoder(small)(batch) @ ImageEncoder(cls)(batch).T)[0, 0]) < 0.999


@pytest.mark.parametrize(("mode", "oc_mode"), [("crop", "shortest"), ("pad", "longest"), ("squash", "squash")])
def test_fast_path_fidelity_vs_open_clip(small, mode: str, oc_mode: str) -> None:
    """Our decode + on-device normalisation vs open_clip preprocess + encode_image: cosine >= 0.995."""
    tf = open_clip.image_transform(224, is_train=False, resize_mode=oc_mode, mean=small.mean, std=small.std)
    photos = [jpeg_bytes(1600, 900, seed=20 + i) for i in range(4)]
    ours = ImageEncoder(small)(np.stack([decode_image(p, 224, mode)[0] for p in photos]))
    with torch.no_grad():
        ref = small.model.encode_image(torch.stack([tf(Image.open(io.BytesIO(p))) for p in photos]))
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    cos = (ours * ref).sum(axis=1)
    assert cos.min() >= 0.995, cos


def test_text_tower(small) -> None:
    t = encode_text(small, ["night, rain, intersection", "a bus"])
    assert t.shape == (2, small.embed_dim) and np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)


def test_device_and_precision_errors() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="sees no CUDA device"):
            load_model(ModelConfig(**SMALL, device="cuda"))
    with pytest.raises(UsageError, match="fp16 is not supported on the CPU"):
        load_model(ModelConfig(**SMALL, device="cpu", precision="fp16"))


def test_device_cuda_means_cuda(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """``--device cuda`` is CUDA or a clear error; a listed device that cannot run a kernel counts as none."""
    from job.model import device as dev

    dev.cuda_problem.cache_clear()
    monkeypatch.setattr(dev.torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match=r"--device cuda: torch .* sees no CUDA device.*valid choices here: auto, cpu"):
        dev.pick_device("cuda")
    assert dev.pick_device("auto").type == "cpu" and dev.pick_device("cpu").type == "cpu"

    dev.cuda_problem.cache_clear()
    monkeypatch.setattr(dev.torch.cuda, "is_available", lambda: True)

    def no_kernel(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")

    monkeypatch.setattr(dev.torch, "arange", no_kernel)
    with pytest.raises(UsageError, match="a test kernel on CUDA failed: CUDA error: no kernel image is available"):
        dev.pick_device("cuda")
    with caplog.at_level("WARNING", logger="job.model.device"):
        assert dev.pick_device("auto").type == "cpu"
    assert "not usable" in caplog.text
    dev.cuda_problem.cache_clear()


@pytest.mark.slow
def test_real_vit_l_14_architecture() -> None:
    """The product's model: ViT-L/14 @224, 768-d output, mean pooling; one image end to end on the CPU."""
    lm = load_model(ModelConfig(model="vit_l_14", pretrained="none"))
    assert lm.name == "ViT-L-14" and lm.image_size == 224 and lm.embed_dim == 768
    assert lm.model.visual.pool_type == "avg"
    assert sum(p.numel() for p in lm.model.visual.parameters()) > 300e6
    batch = decode_image(jpeg_bytes(1600, 900, seed=1), 224, "pad")[0][None]
    vec = ImageEncoder(lm)(batch)
    assert vec.shape == (1, 768) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
    image, cls = ImageEncoder(lm, with_trained=True).encode(batch)  # mean + CLS from one pass of the real tower
    assert cls is not None and cls.shape == (1, 768) and np.allclose(image, vec, atol=1e-5)
