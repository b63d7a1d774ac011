"""The SAE contract: what the framework needs of a sparse autoencoder over a ViT's residual stream.

Every SAE, built-in or loaded from another library's files, is an ``SAE``: ``encode`` maps ``(N, d_in)``
residuals to ``(N, d_sae)`` codes exactly as the publishing library's own encode does (its input
normalisation and ``b_dec`` convention included), ``decode`` maps codes back, and ``encode_feature`` gives one
feature per row with gradient. ``normalisation`` states, in one line, what happens to an input before the
encoder, so a wrong convention is visible in provenance rather than silent.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SAEHook:
    """Where an SAE was trained, when its files say so."""

    layer: int | None = None
    """Block index whose output (the residual stream after the block) the SAE reads; None when unknown."""
    name: str | None = None
    """The hook's name in the publishing library (e.g. ``blocks.9.hook_resid_post``), as written in the file."""
    tokens: str | None = None
    """Which tokens it was trained on when the file says (``patches``, ``cls``, ``all``)."""


class SAE(nn.Module, abc.ABC):
    """Base class of every SAE. Subclasses set ``d_in``, ``d_sae``, ``hook``, ``format`` and ``normalisation``
    and implement :meth:`encode` and :meth:`decode`; :meth:`encode_feature` has a generic default."""

    d_in: int
    d_sae: int
    format: str = ""
    """The file format it was loaded from (``cafe_bench``, ``saelens``, ``dictionary_learning``, ``saev``, ...)."""
    normalisation: str = "none"
    """One line: how an input is transformed before the encoder (e.g. ``x - b_dec``, ``x * scale``)."""
    hook: SAEHook = SAEHook()

    @abc.abstractmethod
    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Codes (N, d_sae) of residuals (N, d_in), as the publishing library computes them; differentiable."""

    @abc.abstractmethod
    def decode(self, z_nm: torch.Tensor) -> torch.Tensor:
        """Reconstructions (N, d_in) in input units from codes (N, d_sae)."""

    def forward(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x_nd`` through the code, in input units (an SAE that normalises each input before
        encoding, so that ``decode`` alone cannot undo it, overrides this)."""
        return self.decode(self.encode(x_nd))

    def encode_feature(self, x_nd: torch.Tensor, features_n: torch.Tensor) -> torch.Tensor:
        """z[n, features_n[n]] for (N, d_in) inputs, shape (N,), with gradient. The default encodes every
        feature; SAEs whose activation is elementwise override it to compute one column per row."""
        codes = self.encode(x_nd)
        return codes.gather(1, features_n.view(-1, 1).to(codes.device)).squeeze(1)

    def describe(self) -> dict:
        """What a run records about this SAE: format, sizes, hook and normalisation."""
        return {
            "format": self.format,
            "d_in": int(self.d_in),
            "d_sae": int(self.d_sae),
            "hook_layer": self.hook.layer,
            "hook_name": self.hook.name,
            "hook_tokens": self.hook.tokens,
            "normalisation": self.normalisation,
        }
