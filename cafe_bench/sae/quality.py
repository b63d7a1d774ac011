"""How well each SAE reconstructs the residuals it is evaluated on: the fraction of variance unexplained (FVU)
and L0 on a suite's own images. A wrong ``b_dec`` or normalisation convention gives codes that look fine and
numbers that are wrong; it shows here as an implausible FVU, so every run records these and warns."""

from __future__ import annotations

import warnings

import torch

FVU_WARNING = 0.5
"""An FVU above this is implausible for a trained SAE on its own hook: the run warns."""


@torch.no_grad()
def sae_quality(backbone, saes: dict, images_n3hw: torch.Tensor, batch_size: int = 64) -> dict:
    """{layer: {"fvu", "l0", "n_tokens"}} of each SAE on the patch tokens of ``images`` at its layer.

    FVU = sum ||x - sae(x)||^2 / sum ||x - mean(x)||^2 over tokens; L0 = mean number of nonzero
    codes per token. Prefix tokens (CLS, registers) are left out, as the SAEs here read patch tokens.
    """
    layers = sorted(saes)
    chunks = [images_n3hw[i : i + batch_size] for i in range(0, len(images_n3hw), batch_size)]
    acts = {layer: [] for layer in layers}
    for chunk in chunks:
        res = backbone.residuals(chunk, layers)
        for layer in layers:
            acts[layer].append(res[layer][:, backbone.n_prefix_tokens :].reshape(-1, res[layer].shape[-1]))
    out = {}
    for layer in layers:
        x = torch.cat(acts[layer]).double()
        sae = saes[layer]
        dtype = next(sae.parameters()).dtype
        z = sae.encode(x.to(dtype)).double()
        x_hat = sae(x.to(dtype)).double()  # forward: reconstruction in input units, whatever decode's space
        fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
        out[layer] = {"fvu": round(fvu, 6), "l0": round(float((z != 0).sum(1).double().mean()), 3), "n_tokens": len(x)}
    return out


def warn_implausible(quality: dict) -> list[str]:
    """Warnings (also issued with ``warnings.warn``) for layers whose FVU exceeds ``FVU_WARNING``."""
    lines = []
    for layer, q in quality.items():
        if q["fvu"] > FVU_WARNING:
            line = (
                f"the SAE at layer {layer} leaves {q['fvu']:.0%} of the variance of its residuals unexplained "
                f"(FVU {q['fvu']:.3f} > {FVU_WARNING}): check its hook, b_dec convention and normalisation"
            )
            warnings.warn(line, stacklevel=2)
            lines.append(line)
    return lines
