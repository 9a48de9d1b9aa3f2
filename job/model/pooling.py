"""Pooling: what a model's image tower gives as ``embedding`` (``--pool``) and as its **trained output** (the vector its
text tower was trained against; ``embedding_trained``), both from one pass of the tower.

Two families of image towers, told apart by their structure (``trained_pool``):

* **CLIP ViTs** (open_clip's ``VisionTransformer``: ViT-L-14, ViT-B-32, …) — trained output ``cls``: the CLS token
  through ``ln_post`` and ``proj``. ``mean``: the mean over the patch tokens (CLS excluded) through the same ``ln_post``
  and ``proj``; this is open_clip's own ``pool_type='avg'`` (``_pool`` in ``open_clip/transformer.py``; with
  ``final_ln_after_pool`` the norm follows the pooling, as there).
* **Attention-pool ViTs** (SigLIP, SigLIP 2: open_clip's ``TimmModel`` around timm's ``VisionTransformer`` built
  with ``global_pool='map'``, ``class_token=False``) — trained output ``map``: the attention-pool head
  (``AttentionPoolLatent``: a learned latent query attends over the patch tokens, then ``proj`` and a residual MLP),
  what ``encode_image`` returns. There is no CLS token. ``mean``: the mean over the patch tokens after the trunk's
  final ``norm`` — what timm itself computes for this trunk with average pooling (``reset_classifier(0,
  global_pool='avg')``: ``forward_features`` → ``global_pool_nlc(x, 'avg')`` → ``fc_norm`` → ``head``, both identity
  here; open_clip's adapter ``head`` is empty for ``timm_proj: none``). In timm's ViT the MAP head *is* the pooling
  step (``VisionTransformer.pool``), so swapping it for the average is the exact analogue of CLIP's ``tok`` → ``avg``:
  same trunk, same final norm, only the pooling differs. Its vectors are as wide as the trained output (the trunk's
  width = ``embed_dim`` in every SigLIP config); a tower where they are not is refused for ``mean``.
  Considered and not taken: running the attention head with uniform attention weights (the head's value/out
  projections and MLP applied to the mean token). It mixes the trained head into a pooling it never saw, and timm
  offers no such mode; the plain mean is the library's definition. ``job compare`` and ``job eval`` score both
  vectors of every run, so the choice is measured on nuScenes, not assumed.

``tests/test_siglip.py`` checks each function against the library's own forward (open_clip's ``encode_image`` for the
trained outputs, a timm trunk reset to ``global_pool='avg'`` for SigLIP's mean).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import UsageError

CLIP_POOL_TYPES: dict[str, str] = {"mean": "avg", "cls": "tok"}  # our --pool → open_clip's VisionTransformer.pool_type


def _timm_trunk(visual: Any) -> Any | None:
    trunk = getattr(visual, "trunk", None)
    return trunk if trunk is not None and hasattr(trunk, "forward_features") else None


def trained_pool(visual: Any, name: str) -> str:
    """``cls`` (a CLIP ViT) or ``map`` (an attention-pool ViT such as SigLIP): the pooling the model was trained with.
    Other towers (ResNets, ConvNeXts, CoCa's attentional pooler) are a UsageError naming the families we support."""
    trunk = _timm_trunk(visual)
    if trunk is not None and getattr(trunk, "attn_pool", None) is not None and getattr(trunk, "global_pool", "") == "map":
        return "map"
    if hasattr(visual, "pool_type") and getattr(visual, "attn_pool", None) is None and hasattr(visual, "ln_post"):
        return "cls"
    raise UsageError(f"model {name} has neither a CLS token nor an attention-pool head over ViT patch tokens; "
                     f"valid: CLIP ViT models (ViT-L-14, ViT-B-32, …) and SigLIP / SigLIP 2 models (ViT-L-16-SigLIP2-256, …)")


def configured_pool(name: str) -> str | None:
    """The trained pooling a built-in open_clip config declares (``map`` for ``timm_pool: map``, ``cls`` for open_clip's
    own ViT), so a wrong ``--pool`` fails before minutes of weight loading; None when the config does not say."""
    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")):
        return None
    vision = dict((open_clip.get_model_config(name) or {}).get("vision_cfg") or {})
    if vision.get("timm_model_name"):
        return "map" if vision.get("timm_pool") == "map" else None
    if vision.get("layers") and not isinstance(vision["layers"], (list, tuple)) and not vision.get("attentional_pool"):
        return "cls"
    return None


def check_pool(pool: str, trained: str, name: str) -> None:
    """``--pool`` must be ``mean`` or the model's own trained pooling (``cls`` for CLIP, ``map`` for SigLIP)."""
    if pool not in ("mean", trained):
        why = "has no CLS token (it pools with an attention head)" if trained == "map" else "has no attention-pool head"
        raise UsageError(f"--pool {pool}: model {name} {why}; valid choices for it: mean, {trained}")


def _siglip_mean(visual: Any, tokens: torch.Tensor) -> torch.Tensor:
    """timm's average pooling of a trunk's normed tokens, then its (identity) fc_norm/head and open_clip's head."""
    trunk = visual.trunk
    pooled = tokens[:, trunk.num_prefix_tokens:].mean(dim=1)
    return visual.head(trunk.head(trunk.head_drop(trunk.fc_norm(pooled))))


def _siglip_map(visual: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The trained output from the trunk's tokens: timm's ``forward_head`` (the MAP head), then open_clip's head."""
    return visual.head(visual.trunk.forward_head(tokens))


def mean_and_cls(visual: Any, x: torch.Tensor) -> torch.Tensor:
    """(n, 2, dim): mean over patch tokens and the CLS token, each through ``ln_post`` and ``proj``, from ONE pass.

    The same arithmetic as open_clip's ``VisionTransformer.forward`` with ``pool_type`` ``avg`` and ``tok``
    (``_pool``: ``ln_post`` on every token, or on the pooled vector with ``final_ln_after_pool``), but the
    transformer runs once and both poolings read its output.
    """
    tokens = visual.transformer(visual._embeds(x))
    if getattr(visual, "final_ln_after_pool", False):
        pooled = torch.stack([visual.ln_post(tokens[:, 1:].mean(dim=1)), visual.ln_post(tokens[:, 0])], dim=1)
    else:
        tokens = visual.ln_post(tokens)
        pooled = torch.stack([tokens[:, 1:].mean(dim=1), tokens[:, 0]], dim=1)
    return pooled @ visual.proj if visual.proj is not None else pooled


def mean_and_map(visual: Any, x: torch.Tensor) -> torch.Tensor:
    """(n, 2, dim): SigLIP's mean over patch tokens and its attention-pool output, from ONE pass of the trunk."""
    tokens = visual.trunk.forward_features(x)
    return torch.stack([_siglip_mean(visual, tokens), _siglip_map(visual, tokens)], dim=1)


def siglip_mean(visual: Any, x: torch.Tensor) -> torch.Tensor:
    """(n, dim): SigLIP's mean over patch tokens (see the module's docstring)."""
    return _siglip_mean(visual, visual.trunk.forward_features(x))


def mean_width(visual: Any, trained: str, embed_dim: int) -> int:
    """How wide the mean-pooled vectors are: CLIP's go through ``proj`` (``embed_dim``); SigLIP's are the trunk's width."""
    if trained == "map":
        return int(getattr(visual.trunk, "num_features", embed_dim))
    return embed_dim


def set_pool(model: Any, pool: str, trained: str) -> None:
    """A CLIP tower reads ``pool_type`` at forward time: set it so ``encode_image`` pools as ``--pool`` says (SigLIP's
    ``encode_image`` is always its trained output; ``image_forward`` computes its mean)."""
    if trained == "cls":
        model.visual.pool_type = CLIP_POOL_TYPES[pool]


def image_forward(model: Any, pool: str, trained: str, *, with_trained: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function from a normalised image batch to (n, dim) vectors of ``pool`` — or, ``with_trained`` (``--pool
    mean`` keeping text vectors), (n, 2, dim): the mean-pooled vector and the trained output of the same pass.
    A CLIP model's ``encode_image`` pools as ``set_pool`` set it."""
    visual = model.visual
    if trained == "cls":
        if with_trained:
            return lambda x: mean_and_cls(visual, x)
        return model.encode_image
    if with_trained:
        return lambda x: mean_and_map(visual, x)
    if pool == "mean":
        return lambda x: siglip_mean(visual, x)
    return model.encode_image
