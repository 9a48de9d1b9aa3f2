"""A small Hugging Face tokenizer made here (no hub), in the folder layout ``--tokenizer DIR`` reads, for SigLIP tests.

SigLIP's real tokenizer (Gemma's 256k vocabulary) comes from the Hugging Face hub, which tests cannot reach; this one
is a real ``tokenizers`` word-level tokenizer saved by ``transformers`` (``tokenizer.json`` +
``tokenizer_config.json``), loaded by the job through open_clip's own ``HFTokenizer``, exactly like a downloaded copy.
Its ids (< 100) fit any SigLIP text tower's vocabulary.
"""
from __future__ import annotations

from pathlib import Path

# SigLIP 2's small model: random init is ~12 s on the CPU (most of it the 256k-token text embedding), a forward
# pass of a few 256x256 images well under a second.
SIGLIP_MODEL = "ViT-B-32-SigLIP2-256"
WORDS = ("a an the of photo dashcam image road street night rain rainy wet car cars bus truck pedestrian cyclist "
         "intersection cone cones traffic light crossing parked stop construction vehicle empty highway").split()


def make_tokenizer(folder: Path) -> Path:
    """Write a lower-casing word-level tokenizer (pad 0, eos 1, unk 2; every text ends with eos) into ``folder``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(("<pad>", "<eos>", "<unk>", *WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>") \
        .save_pretrained(str(folder))
    return folder


def hub_cache_with(folder: Path, cache: Path, repo: str) -> Path:
    """An offline Hugging Face hub cache (``HF_HUB_CACHE``) holding ``folder``'s files as ``repo``'s main revision."""
    revision = "0" * 40
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    # transformers reads the repository's config.json first (timm's hub repositories have one: timm's own config)
    (snapshot / "config.json").write_text("{}")
    (cache / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text(revision)
    return cache
