"""lxt's efficient LRP rules mapped onto open_clip's and timm's ViT modules, in a scope that is undone on exit.

lxt patches classes process-wide (``cls.forward = rule``). :func:`lrp_rules` saves every attribute it touches
and restores it when the block ends, even on error, so no other method ever sees patched classes.

Rules (relevance = input x gradient, the Gradient*Input framework of lxt):
- LayerNorm (torch, open_clip ``LayerNorm`` / ``LayerNormFp32``): identity rule on the variance
  (``lxt.efficient.patches.layer_norm_forward``).
- GELU, QuickGELU: identity rule (``non_linear_forward``).
- timm's ``LayerNorm``/``LayerNormFp32``/``GELU`` likewise; timm's ``Attention`` gets the attention rules below.
- MultiheadAttention: ``cp`` stops the gradient through the softmax at query and key (CP-LRP,
  ``cp_multi_head_attention_forward``); ``attn`` lets it flow with the uniform rule on both matmuls
  (AttnLRP: query and key gradients divided by 4, value by 2, as lxt does for transformers' attention).
"""

from __future__ import annotations

import contextlib
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

RULE_SETS = ("cp", "attn")
_TOUCHED = ("forward", "original_forward")


def attnlrp_multi_head_attention_forward(
    self,
    query,
    key,
    value,
    key_padding_mask=None,
    need_weights=False,
    attn_mask=None,
    average_attn_weights=True,
    is_causal=False,
):
    """nn.MultiheadAttention (batch_first, packed in-projection) with AttnLRP's uniform rule on both matmuls."""
    from lxt.efficient.rules import divide_gradient

    if not self.batch_first or self.in_proj_weight is None:
        raise NotImplementedError("AttnLRP rule supports batch_first MultiheadAttention with packed in-projection")
    if key_padding_mask is not None or is_causal:
        raise NotImplementedError("AttnLRP rule does not support key_padding_mask or is_causal")
    b, t, d = query.shape
    h = self.num_heads
    w_q, w_k, w_v = self.in_proj_weight.chunk(3)
    b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

    def heads(x):  # (B, T, d) -> (B, h, T, d/h)
        return x.view(b, -1, h, d // h).transpose(1, 2)

    q = divide_gradient(heads(F.linear(query, w_q, b_q)), 4)
    k = divide_gradient(heads(F.linear(key, w_k, b_k)), 4)
    v = divide_gradient(heads(F.linear(value, w_v, b_v)), 2)
    logits = q @ k.transpose(-2, -1) / math.sqrt(d // h)  # (B, h, T, T)
    if attn_mask is not None:
        logits = logits + attn_mask
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    return self.out_proj(out), None


def _timm_attention_forward(self, x, attn_mask=None, is_causal=False, *, rules: str):
    """timm ``Attention`` (no gate, no QK norm) with the CP or AttnLRP rule on query, key and value."""
    from lxt.efficient.rules import divide_gradient

    if self.gate is not None or not isinstance(self.q_norm, nn.Identity) or is_causal:
        raise NotImplementedError("LRP rules support timm Attention without gate, QK norm or causal masking")
    b, n, _ = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    if rules == "cp":
        q, k = q.detach(), k.detach()
    else:
        q, k, v = divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)
    logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
    if attn_mask is not None:
        logits = logits + attn_mask
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, self.attn_dim)
    return self.proj(self.norm(out))


def _timm_patch_map(rules: str, patch_method, layer_norm_forward, non_linear_forward) -> dict:
    """timm's ViT classes: its LayerNorm subclasses, GELU and Attention (empty if timm is not installed)."""
    try:
        from timm.layers import activations, attention, norm
    except ImportError:
        return {}

    def attention_forward(self, x, attn_mask=None, is_causal=False):
        return _timm_attention_forward(self, x, attn_mask, is_causal, rules=rules)

    return {
        norm.LayerNorm: partial(patch_method, layer_norm_forward),
        norm.LayerNormFp32: partial(patch_method, layer_norm_forward),
        activations.GELU: partial(patch_method, non_linear_forward, keep_original=True),
        activations.GELUTanh: partial(patch_method, non_linear_forward, keep_original=True),
        attention.Attention: partial(patch_method, attention_forward),
    }


def _patch_map(rules: str) -> dict:
    from lxt.efficient.patches import (
        cp_multi_head_attention_forward,
        layer_norm_forward,
        non_linear_forward,
        patch_method,
    )
    from open_clip import transformer as oc

    attention = cp_multi_head_attention_forward if rules == "cp" else attnlrp_multi_head_attention_forward
    timm_map = _timm_patch_map(rules, patch_method, layer_norm_forward, non_linear_forward)
    return {
        **timm_map,
        nn.LayerNorm: partial(patch_method, layer_norm_forward),
        oc.LayerNorm: partial(patch_method, layer_norm_forward),
        oc.LayerNormFp32: partial(patch_method, layer_norm_forward),
        nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
        oc.QuickGELU: partial(patch_method, non_linear_forward, keep_original=True),
        nn.MultiheadAttention: partial(patch_method, attention, keep_original=rules == "cp"),
    }


@contextlib.contextmanager
def lrp_rules(rules: str = "cp"):
    """Within the block, open_clip/torch ViT modules compute with lxt's LRP rules; afterwards they are exactly
    as before.

    Args:
        rules: ``cp`` (CP-LRP) or ``attn`` (AttnLRP), default ``cp``.
    """
    if rules not in RULE_SETS:
        raise ValueError(f"unknown LRP rule set {rules!r}; valid: {', '.join(RULE_SETS)}")
    patch_map = _patch_map(rules)
    saved = {cls: {name: cls.__dict__[name] for name in _TOUCHED if name in cls.__dict__} for cls in patch_map}
    try:
        for cls, patch in patch_map.items():
            if not patch(cls):
                raise RuntimeError(f"lxt could not patch {cls.__module__}.{cls.__qualname__}: already patched?")
        yield
    finally:
        for cls, attrs in saved.items():
            for name in _TOUCHED:
                if name in attrs:
                    setattr(cls, name, attrs[name])
                elif name in cls.__dict__:
                    delattr(cls, name)


def input_relevance(target, rules: str) -> torch.Tensor:
    """LRP relevance of every pixel, (B, 3, H, W): normalised input x its gradient, under ``rules``.

    The backbone normalises pixels as (x - mean) / std, so the relevance of the network input
    x_n * dz/dx_n equals (x - mean) * dz/dx in pixel units.
    """
    from cafe_bench.attributors.gradient import input_gradient

    with lrp_rules(rules):
        grad = input_gradient(target)
    return (target.images.detach() - target.pixel_mean) * grad
