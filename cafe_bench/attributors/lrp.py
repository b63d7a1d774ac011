"""Layer-wise relevance propagation with lxt's rules: CP-LRP and AttnLRP.

Relevance starts at z_k, flows through the SAE encoder into block L's residual stream and down to the pixels;
the framework sums it inside each patch.
"""

from __future__ import annotations

from cafe_bench.attributors.base import Attributor, Cost
from cafe_bench.attributors.lrp_patches import input_relevance
from cafe_bench.attributors.registry import register_attributor


class _LRP(Attributor):
    needs_grad = True
    rules = "cp"

    def cost(self, n_patches: int) -> Cost:
        return Cost(forward=1, backward=1)

    def attribute(self, target):
        return input_relevance(target, self.rules)


@register_attributor("cp_lrp")
class CPLRPAttributor(_LRP):
    """CP-LRP (lxt): no relevance through the attention softmax; conserves z_k exactly on a bias-free model."""

    rules = "cp"


@register_attributor("attnlrp")
class AttnLRPAttributor(_LRP):
    """AttnLRP (lxt rules): relevance also through the attention softmax, uniform rule on its matmuls."""

    rules = "attn"
