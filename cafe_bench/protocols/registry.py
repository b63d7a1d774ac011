"""The protocol registry: a protocol is a start image, a patch order and the direction of "better".

A curve starts from the baseline image (patches are inserted from the image) or from the image (patches are
replaced by the baseline), takes patches most relevant first (MoRF) or least relevant first (LeRF), and its
AUC is better when higher or when lower. The engine reads nothing else from a protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from cafe_bench.errors import UnknownNameError

STARTS = ("baseline", "image")
ORDERS = ("most", "least")


@dataclass(frozen=True)
class Protocol:
    """One perturbation protocol."""

    name: str
    """Registry name, recorded with every curve."""
    start: str
    """``baseline``: the curve starts at the baseline image and taken patches show the image (insertion);
    ``image``: it starts at the image and taken patches show the baseline (deletion)."""
    order: str
    """``most``: patches in descending score (ties by ascending patch index); ``least``: ascending score (ties
    by ascending patch index)."""
    higher_is_better: bool
    """Direction of the AUC: whether a faithful ranking gives a higher AUC."""
    description: str = ""

    def __post_init__(self):
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {self.start!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")

    @property
    def sign(self) -> float:
        """+1 when higher is better, -1 when lower is: ``sign * auc`` is always "higher is better"."""
        return 1.0 if self.higher_is_better else -1.0


_PROTOCOLS: dict[str, Protocol] = {}
DEFAULT_PROTOCOLS = ("insertion", "deletion")
"""Protocols of ``run`` when none are named."""


def register_protocol(protocol: Protocol) -> Protocol:
    """Add ``protocol`` to the registry; a different protocol under a taken name is refused."""
    old = _PROTOCOLS.get(protocol.name)
    if old is not None and old != protocol:
        raise ValueError(f"protocol name {protocol.name!r} is already registered")
    _PROTOCOLS[protocol.name] = protocol
    return protocol


def list_protocols() -> list[str]:
    """Names of the registered protocols, the defaults first."""
    return [*DEFAULT_PROTOCOLS, *sorted(set(_PROTOCOLS) - set(DEFAULT_PROTOCOLS))]


def get_protocol(name) -> Protocol:
    """The protocol called ``name`` (or ``name`` itself if it is a Protocol); raises UnknownNameError listing
    the valid names."""
    if isinstance(name, Protocol):
        return name
    if name not in _PROTOCOLS:
        raise UnknownNameError(f"unknown protocol {name!r}; valid: {', '.join(list_protocols())}")
    return _PROTOCOLS[name]


def higher_is_better(name: str) -> bool:
    """Direction of protocol ``name``'s AUC (raises UnknownNameError for an unknown protocol)."""
    return get_protocol(name).higher_is_better


register_protocol(
    Protocol("insertion", "baseline", "most", True, "insert the most relevant patches first into the baseline")
)
register_protocol(
    Protocol("deletion", "image", "most", False, "replace the most relevant patches first by the baseline")
)
register_protocol(
    Protocol("insertion_lerf", "baseline", "least", False, "insert the least relevant patches first into the baseline")
)
register_protocol(
    Protocol("deletion_lerf", "image", "least", True, "replace the least relevant patches first by the baseline")
)
