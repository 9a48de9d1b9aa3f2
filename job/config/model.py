"""The model's section of the config (``JobConfig.model``), its choices and defaults, and the preprocessing choices a
``job compare`` variant names too; re-exported by ``job.config``'s face. Standard library and ``job.values`` only."""
from __future__ import annotations

from dataclasses import dataclass

from ..values import at_least, check_choice
from ._keep import keep as _keep

# --pool: "mean" over the patch tokens, or the model's trained output — "cls" (CLIP ViTs: the CLS token) or "map"
# (SigLIP: the attention-pool head); which of cls/map a model has, and what mean is for each, is job.model.pooling's
TRAINED_POOLS: tuple[str, ...] = ("cls", "map")
POOLS: tuple[str, ...] = ("mean", *TRAINED_POOLS)
RESIZE_MODES: tuple[str, ...] = ("pad", "crop", "squash")
DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "openclip"
DEFAULT_RESIZE_MODE = "pad"
# --text-vectors: with --pool mean, "trained" also stores the trained output (embedding_trained) for text queries
TEXT_VECTORS: tuple[str, ...] = ("trained", "none")
_OLD_TEXT_VECTORS = {"cls": "trained"}  # the spelling of runs made before SigLIP (their stored configs still load)
# --tokenizer's default: a folder holding a model's Hugging Face tokenizer files (tokenizer.json, …), for machines
# that cannot reach the hub (job.model.tokenizer)
TOKENIZER_ENV = "JOB_TOKENIZER_DIR"
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelConfig:
    """Which network and weights embed the images, and how its output is pooled."""

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    pool: str = "mean"
    text_vectors: str = "trained"  # with pool mean: also store the trained output (embedding_trained); "none": not
    image_size: int | None = None  # None: the model's own input size
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    compile: bool = False
    cache_dir: str | None = None
    weights_cache: str | None = None  # e.g. s3://bucket/cache/weights: tag weights fetched once per account
    # a folder with the model's Hugging Face tokenizer files (SigLIP's come from the hub); None: $JOB_TOKENIZER_DIR,
    # else the hub. Not part of the vectors' identity: each machine says where its copy is (job.model.tokenizer)
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        check_choice("pool", self.pool, POOLS)
        _keep(self, text_vectors=_OLD_TEXT_VECTORS.get(self.text_vectors, self.text_vectors))
        check_choice("--text-vectors", self.text_vectors, TEXT_VECTORS)
        check_choice("device", self.device, DEVICES)
        check_choice("precision", self.precision, PRECISIONS)
        at_least("--image-size", self.image_size, 1)
