"""Model stage: create an OpenCLIP model with its weights (names and weights: ``job.model.registry``; pooling:
``job.model.pooling``; tokenizers: ``job.model.tokenizer``), the batch encoders, and ``load_run_model`` for a finished
run's own model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import DataError, UsageError
from ..runfolder import IMAGE_COLUMN, TRAINED_COLUMN, Manifest
from .device import pick_device
from .pooling import check_pool, configured_pool, image_forward, mean_width, set_pool, trained_pool
from .registry import (
    WeightsSpec,
    _fetch_url,
    cached_tag_weights,
    resolve_model_name,
    resolve_pretrained,
)
from .tokenizer import load_tokenizer, tokenizer_folder

log = logging.getLogger(__name__)


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, shapes, bytes), whatever the weights' origin."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on the CPU."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if device.type == "cpu" and dtype == torch.float16:
        raise UsageError("--precision fp16 is not supported on the CPU; valid choices there: auto, fp32, bf16")
    return dtype


@dataclass
class LoadedModel:
    """A ready model plus everything the other stages need to know about it."""

    model: Any  # an open_clip CLIP model (encode_image / encode_text)
    name: str
    weights: WeightsSpec
    weights_sha256: str
    pool: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    embed_dim: int
    device: torch.device
    dtype: torch.dtype
    tokenizer: Any
    load_seconds: float
    text_vectors: str = "trained"  # with pool mean: also return the trained output (ImageEncoder(with_trained=True))
    trained: str = "cls"  # the model's trained output: cls (CLIP ViTs) or map (SigLIP's attention pool)
    tokenizer_source: str = "open_clip"

    @property
    def text_column(self) -> str | None:
        """The embeddings column text queries search: the trained output (its own column with mean pooling)."""
        if self.pool != "mean":
            return IMAGE_COLUMN
        return TRAINED_COLUMN if self.text_vectors == "trained" else None

    def describe(self) -> dict[str, Any]:
        """Manifest entry for the model."""
        return {
            "name": self.name,
            "pretrained": self.weights.describe(),
            "weights_sha256": self.weights_sha256,
            "pool": self.pool,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "embed_dim": self.embed_dim,
            "device": str(self.device),
            "precision": str(self.dtype).replace("torch.", ""),
            "load_seconds": round(self.load_seconds, 3),
            "trained_pool": self.trained,
            "tokenizer": self.tokenizer_source,
        }


def _create(name: str, weights: WeightsSpec, cfg: ModelConfig) -> torch.nn.Module:
    import open_clip

    kwargs: dict[str, Any] = {}
    if cfg.image_size:
        kwargs["force_image_size"] = cfg.image_size
    if cfg.cache_dir:
        kwargs["cache_dir"] = cfg.cache_dir
    torch.manual_seed(cfg.seed)
    try:
        if weights.kind == "none":
            return open_clip.create_model(name, pretrained=None, **kwargs)
        if weights.kind == "hf-hub":
            return open_clip.create_model(weights.value, **kwargs)
        if weights.kind == "url":
            return open_clip.create_model(name, pretrained=_fetch_url(str(weights.value), cfg.cache_dir), **kwargs)
        if cfg.weights_cache:
            local, preprocess = cached_tag_weights(name, str(weights.value), cfg.weights_cache, cfg.cache_dir)
            return open_clip.create_model(name, pretrained=local, force_preprocess_cfg=preprocess, **kwargs)
        return open_clip.create_model(name, pretrained=weights.value, **kwargs)
    except UsageError:
        raise
    except Exception as exc:  # torch.load/safetensors/hub raise many types; all mean "these weights don't load"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"could not load weights {weights.describe()} for {name}: {first}") from exc


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Create the model with its weights and tokenizer on the chosen device and precision, in eval mode.

    ``--pool`` is ``mean`` or the model's trained pooling (``cls`` for CLIP ViTs, ``map`` for SigLIP), checked here
    against the model's structure (``job.model.pooling``); the encoders compute it.
    """
    import open_clip

    from ..config import POOLS, PRECISIONS
    from ..values import check_choice

    check_choice("pool", cfg.pool, POOLS)
    check_choice("precision", cfg.precision, PRECISIONS)
    name = resolve_model_name(cfg.model)
    weights = resolve_pretrained(name, cfg.pretrained)
    declared = configured_pool(name)
    if declared is not None:
        check_pool(cfg.pool, declared, name)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.precision, device)
    t0 = time.perf_counter()
    tokenizer, tokenizer_source = load_tokenizer(name, cfg.tokenizer, cache_dir=cfg.cache_dir)  # fails before the weights
    model = _create(name, weights, cfg)
    model.eval().requires_grad_(False)
    visual: Any = model.visual
    trained = trained_pool(visual, name)
    check_pool(cfg.pool, trained, name)
    set_pool(model, cfg.pool, trained)
    embed_dim = _output_dim(model)
    if cfg.pool == "mean" and mean_width(visual, trained, embed_dim) != embed_dim:
        raise UsageError(f"--pool mean: model {name}'s mean-pooled vectors are {mean_width(visual, trained, embed_dim)}"
                         f"-d, its trained output {embed_dim}-d; valid choice for it: --pool {trained}")
    sha = weights_hash(model)
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", visual.image_size)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    model = model.to(device)
    if dtype != torch.float32:
        model = model.to(dtype)
    return LoadedModel(
        model=model,
        name=name,
        weights=weights,
        weights_sha256=sha,
        pool=cfg.pool,
        image_size=size,
        mean=_rgb(pp["mean"]),
        std=_rgb(pp["std"]),
        interpolation=str(pp.get("interpolation", "bicubic")),
        embed_dim=embed_dim,
        device=device,
        dtype=dtype,
        tokenizer=tokenizer,
        load_seconds=time.perf_counter() - t0,
        text_vectors=cfg.text_vectors,
        trained=trained,
        tokenizer_source=tokenizer_source,
    )


def _output_dim(model: Any) -> int:
    """Width of the image tower's trained output (= the text tower's): CLIP's ``text_projection``, else (SigLIP's
    ``CustomTextCLIP``) the text tower's ``output_dim``."""
    projection = getattr(model, "text_projection", None)
    if projection is not None:
        return int(getattr(model.visual, "output_dim", 0) or projection.shape[-1])
    return int(model.text.output_dim)


def _rgb(values: Sequence[float]) -> tuple[float, float, float]:
    r, g, b = (float(x) for x in values)
    return r, g, b


class ImageEncoder:
    """uint8 NHWC batches in, L2-normalised float32 embeddings out; normalisation runs on the device.

    ``with_trained`` (used when the model pools by mean and keeps text vectors): ``submit`` results are
    (n, 2, dim), the mean-pooled image vector and the trained output (CLS token / attention pool) of the same pass.
    """

    def __init__(self, lm: LoadedModel, compile_model: bool = False, *, with_trained: bool = False) -> None:
        self.lm = lm
        dev = lm.device
        self.with_trained = with_trained and lm.pool == "mean"
        fn = image_forward(lm.model, lm.pool, lm.trained, with_trained=self.with_trained)
        self._encode = fn
        if compile_model:
            if dev.type != "cuda":
                log.info("--compile only pays off on CUDA; running eagerly on %s", dev)
            else:
                # fixed batch shapes after the first call; the last partial batch recompiles once
                self._encode = torch.compile(fn, mode="max-autotune", dynamic=False)
        self._mean = torch.tensor(lm.mean, device=dev, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(lm.std, device=dev, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    @torch.inference_mode()
    def submit(self, batch: np.ndarray | torch.Tensor) -> Callable[[], np.ndarray]:
        """Start embedding a (n, H, W, 3) uint8 batch; the returned function waits for the (n, dim) result
        ((n, 2, dim) with ``with_trained``: image vector, trained output).

        On CUDA the input goes through pinned memory and the result comes back with a non-blocking
        copy, so the caller can hand the GPU the next batch before it collects this one.
        """
        x = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
        cuda = self.lm.device.type == "cuda"
        if cuda and x.device.type == "cpu":
            x = x.pin_memory().to(self.lm.device, non_blocking=True)
        else:
            x = x.to(self.lm.device)
        x = x.permute(0, 3, 1, 2).float()
        x = ((x - self._mean) * self._inv_std).to(self.lm.dtype)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = torch.nn.functional.normalize(self._encode(x).float(), dim=-1)
        if not cuda:
            out = feats.numpy()
            return lambda: out
        host = torch.empty(feats.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(feats, non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def wait() -> np.ndarray:
            done.synchronize()
            return host.numpy()

        return wait

    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Embed a (n, H, W, 3) uint8 batch; returns (n, dim) float32, unit length (the image vectors)."""
        out = self.submit(batch)()
        return out[:, 0] if out.ndim == 3 else out

    def encode(self, batch: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(image vectors, the trained outputs or None), both (n, dim), from one forward pass."""
        out = self.submit(batch)()
        if out.ndim == 3:
            return out[:, 0], out[:, 1]
        return out, (out if self.lm.pool != "mean" else None)


@torch.inference_mode()
def encode_text(lm: LoadedModel, texts: Sequence[str]) -> np.ndarray:
    """Embed text queries with the same model's text tower; (n, dim) float32, unit length."""
    tokens = lm.tokenizer(list(texts)).to(lm.device)
    feats = lm.model.encode_text(tokens).float()
    return torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()


def load_run_model(manifest: Manifest, *, device: str | None = None, tokenizer: str | None = None) -> LoadedModel:
    """The model that made a run's vectors, on this machine, checked against the run's weights hash.

    Search and the notebook helpers both load a run's model through here. The device is ``device``
    (default: auto); fp16 runs load in the default precision off CUDA (same weights, same hash).
    The tokenizer folder is this machine's (``tokenizer``, else ``$JOB_TOKENIZER_DIR``), else the one the run was
    embedded with when it exists here, else the hub.
    A different hash (other weights under the same name) or output size is a DataError.
    """
    if not manifest.model.name:
        raise UsageError("this run's vectors were imported (job import) without --model: text and image queries need "
                         "the model that made them (import again with --model NAME --pretrained TAG); search by id works")
    mc = manifest.model_config()
    dev = device or "auto"
    precision = mc.precision if (mc.precision != "fp16" or dev == "cuda") else "auto"
    folder = tokenizer_folder(tokenizer) or (mc.tokenizer if mc.tokenizer and os.path.isdir(mc.tokenizer) else None)
    lm = load_model(dataclasses.replace(mc, device=dev, precision=precision, compile=False, tokenizer=folder))
    want = manifest.model.weights_sha256
    if want and lm.weights_sha256 != want:
        raise DataError(f"the run was embedded with weights {want[:12]}…, but {mc.model} / {mc.pretrained} loads "
                        f"{lm.weights_sha256[:12]}… here: the run's weights are not available on this machine")
    if lm.embed_dim != manifest.model.embed_dim:
        raise DataError(f"model {lm.name} makes {lm.embed_dim}-d vectors, the run holds "
                        f"{manifest.model.embed_dim}-d vectors")
    return lm
