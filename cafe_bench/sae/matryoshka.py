"""Matryoshka BatchTopK sparse autoencoder (the SAE family of the CaFE paper).

Training keeps the k * B largest pre-activations of a batch (BatchTopK); nested prefixes of the dictionary
each reconstruct the input (Matryoshka). Inference uses one threshold learned during training, so a token's
code does not depend on its batch: ``z = relu(pre) * (relu(pre) > threshold)``.
"""

from __future__ import annotations

import torch
from torch import nn

from cafe_bench.sae.base import SAE


class MatryoshkaBatchTopKSAE(SAE):
    """SAE with encoder ``(x * input_scale - b_dec) @ W_enc + b_enc`` and a learned inference threshold.

    Args:
        d_in: residual dimension.
        d_sae: number of features m.
        k: mean active features per token during training.
        group_sizes: Matryoshka prefix sizes, increasing, the last equal to d_sae.
    """

    format = "cafe_bench"
    normalisation = "x * input_scale - b_dec (input_scale a stored scalar)"

    def __init__(self, d_in: int, d_sae: int, k: int, group_sizes: list[int]):
        super().__init__()
        if sorted(group_sizes) != list(group_sizes) or group_sizes[-1] != d_sae:
            raise ValueError(f"group_sizes must increase and end at d_sae={d_sae}, got {group_sizes}")
        self.d_in, self.d_sae, self.k, self.group_sizes = d_in, d_sae, k, list(group_sizes)
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("input_scale", torch.ones(()))
        nn.init.kaiming_uniform_(self.W_dec)
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
            self.W_enc.copy_(self.W_dec.T)

    def pre_acts(self, x_nd: torch.Tensor) -> torch.Tensor:
        """ReLU pre-activations, (..., m)."""
        return torch.relu((x_nd * self.input_scale - self.b_dec) @ self.W_enc + self.b_enc)

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Inference code z (..., m): pre-activations above the learned threshold, differentiable."""
        pre = self.pre_acts(x_nd)
        return pre * (pre > self.threshold).to(pre.dtype)

    def encode_batch_topk(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Training code: the k * N largest pre-activations of the (N, d) batch, the rest zero."""
        pre = self.pre_acts(x_nd)  # (N, m)
        flat = pre.flatten()
        top = flat.topk(self.k * x_nd.shape[0], sorted=False)
        return torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)

    def decode(self, z_nm: torch.Tensor, n_features: int | None = None) -> torch.Tensor:
        """Reconstruction in input units from the first ``n_features`` features (default all)."""
        n = self.d_sae if n_features is None else n_features
        return (z_nm[..., :n] @ self.W_dec[:n] + self.b_dec) / self.input_scale

    def forward(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Reconstruct with the inference code."""
        return self.decode(self.encode(x_nd))

    def encode_feature(self, x_nd: torch.Tensor, features_n: torch.Tensor) -> torch.Tensor:
        """Inference code of one feature per row: z[n, features_n[n]] for (N, d) inputs, shape (N,)."""
        w_nd = self.W_enc[:, features_n].T  # (N, d)
        pre = torch.relu(((x_nd * self.input_scale - self.b_dec) * w_nd).sum(-1) + self.b_enc[features_n])
        return pre * (pre > self.threshold).to(pre.dtype)
