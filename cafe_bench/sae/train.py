"""A small trainer for Matryoshka BatchTopK SAEs on residual-stream activations."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from cafe_bench.sae.matryoshka import MatryoshkaBatchTopKSAE


@dataclass(frozen=True)
class SAETrainConfig:
    """Hyper-parameters of one SAE."""

    expansion: int = 8
    """d_sae = expansion * d_in."""
    k: int = 16
    """Mean active features per token (BatchTopK)."""
    n_groups: int = 4
    """Matryoshka prefixes: d_sae/2**(n_groups-1), ..., d_sae/2, d_sae."""
    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 2048
    """Tokens per step."""
    lr: float = 1e-3
    """Adam learning rate."""


def train_sae(acts_nd: torch.Tensor, config: SAETrainConfig, seed: int, progress: bool = True):
    """Train an SAE on (N, d) activations; returns (sae, metrics) with FVU and L0 on held-out tokens."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    perm = torch.randperm(acts_nd.shape[0], generator=gen)
    n_val = max(1, acts_nd.shape[0] // 10)
    val, train = acts_nd[perm[:n_val]], acts_nd[perm[n_val:]]
    d_in = acts_nd.shape[1]
    d_sae = config.expansion * d_in
    groups = [d_sae // 2**i for i in reversed(range(config.n_groups))]
    sae = MatryoshkaBatchTopKSAE(d_in, d_sae, config.k, groups)
    with torch.no_grad():
        sae.input_scale.fill_((d_in**0.5) / train.norm(dim=1).mean())
        sae.b_dec.copy_((train * sae.input_scale).mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=config.lr)
    thresholds = []
    for step in tqdm(range(config.steps), desc="sae", disable=not progress, leave=False):
        idx = torch.randint(0, train.shape[0], (config.batch_size,), generator=gen)
        x = train[idx]
        z = sae.encode_batch_topk(x)
        loss = sum(((sae.decode(z, n) - x) * sae.input_scale).pow(2).sum(-1).mean() for n in groups) / len(groups)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
            if step >= config.steps // 2:
                kept = z[z > 0]
                if kept.numel():
                    thresholds.append(kept.min())
    with torch.no_grad():
        sae.threshold.fill_(torch.stack(thresholds).mean() if thresholds else 0.0)
    return sae, {**sae_metrics(sae, val), "config": asdict(config), "seed": seed}


@torch.no_grad()
def sae_metrics(sae: MatryoshkaBatchTopKSAE, acts_nd: torch.Tensor) -> dict:
    """Fraction of variance unexplained, mean L0 and the share of features that ever fire on ``acts_nd``."""
    z = sae.encode(acts_nd)
    recon = sae.decode(z)
    fvu = (recon - acts_nd).pow(2).sum() / (acts_nd - acts_nd.mean(0)).pow(2).sum()
    return {
        "fvu": round(float(fvu), 4),
        "l0": round(float((z > 0).float().sum(-1).mean()), 2),
        "alive_fraction": round(float((z > 0).any(0).float().mean()), 4),
        "n_tokens": int(acts_nd.shape[0]),
    }


@dataclass(frozen=True)
class TopKTrainConfig:
    """Hyper-parameters of a TopK SAE (ReLU of the k largest pre-activations per token)."""

    d_sae: int = 1536
    """Dictionary size."""
    k: int = 32
    """Active features per token."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 512
    """Tokens per step."""
    lr: float = 1e-3
    """Adam learning rate."""
    aux_k: int = 64
    """Dead latents used by the auxiliary loss that revives them (weight ``aux_coef``)."""
    aux_coef: float = 1 / 32
    dead_after: int = 200
    """Steps without firing after which a latent counts as dead."""


def train_topk_sae(acts_nd: torch.Tensor, config: TopKTrainConfig, seed: int, progress: bool = True):
    """Train a TopK SAE on (N, d) activations in SAELens's ``topk`` form (``relu(topk((x - b_dec) W_enc + b_enc))``,
    unit-norm decoder rows); returns (tensors for :func:`cafe_bench.sae.formats.saelens.save_saelens`, metrics on
    10 % held-out tokens: FVU, L0, alive fraction)."""
    gen = torch.Generator().manual_seed(seed)  # every draw from this generator: the caller's state is untouched
    perm = torch.randperm(acts_nd.shape[0], generator=gen)
    n_val = max(1, acts_nd.shape[0] // 10)
    val, train = acts_nd[perm[:n_val]], acts_nd[perm[n_val:]]
    d_in = acts_nd.shape[1]
    w_dec = torch.randn(config.d_sae, d_in, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    params = {
        "W_dec": torch.nn.Parameter(w_dec),
        "W_enc": torch.nn.Parameter(w_dec.t().clone()),
        "b_enc": torch.nn.Parameter(torch.zeros(config.d_sae)),
        "b_dec": torch.nn.Parameter(train.median(dim=0).values.clone()),
    }
    opt = torch.optim.Adam(params.values(), lr=config.lr)
    since_fired = torch.zeros(config.d_sae, dtype=torch.long)
    for _step in tqdm(range(config.steps), desc="sae", disable=not progress, leave=False):
        x = train[torch.randint(0, train.shape[0], (config.batch_size,), generator=gen)]
        pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        top = pre.topk(config.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        recon = z @ params["W_dec"] + params["b_dec"]
        err = x - recon
        loss = err.pow(2).sum(-1).mean()
        fired = (z > 0).any(0)
        since_fired = torch.where(fired, 0, since_fired + 1)
        dead = since_fired > config.dead_after
        if dead.any():  # AuxK: let the dead latents reconstruct the residual error
            aux_pre = pre.masked_fill(~dead, float("-inf"))
            aux = aux_pre.topk(min(config.aux_k, int(dead.sum())), dim=-1)
            z_aux = torch.zeros_like(pre).scatter(-1, aux.indices, aux.values.relu())
            loss = loss + config.aux_coef * (err.detach() - z_aux @ params["W_dec"]).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True)
    tensors = {name: p.detach().clone() for name, p in params.items()}
    return tensors, {**_topk_metrics(tensors, config.k, val), "config": asdict(config), "seed": seed}


@torch.no_grad()
def _topk_metrics(t: dict, k: int, acts_nd: torch.Tensor) -> dict:
    pre = (acts_nd - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    top = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    recon = z @ t["W_dec"] + t["b_dec"]
    fvu = (recon - acts_nd).pow(2).sum() / (acts_nd - acts_nd.mean(0)).pow(2).sum()
    return {
        "fvu": round(float(fvu), 4),
        "l0": round(float((z > 0).float().sum(-1).mean()), 2),
        "alive_fraction": round(float((z > 0).any(0).float().mean()), 4),
        "n_tokens": int(acts_nd.shape[0]),
    }
