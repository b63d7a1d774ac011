"""The schemas of what cafe_bench stores: a result record (one line of ``results.jsonl``), the run
configuration (``run.json``'s ``config``) and a board row. Each carries ``schema_version``; readers refuse
other versions with a message that says how to regenerate.

Record status: ``ok`` (a curve and its AUC), ``skipped: dead feature ...`` (z_k of the clean image is 0, the
same for every method) or ``failed: ...`` (the method raised or broke the contract; retried on ``--resume``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

SCHEMA_VERSION = 2
"""Version of records, run configs and boards written by this cafe_bench."""
UNIT_FIELDS = ("layer", "feature", "image_id", "token")
"""What identifies a unit."""
KEY_FIELDS = (*UNIT_FIELDS, "method", "protocol")
"""What identifies a record."""
DEAD = "skipped: dead feature (z_k of the clean image is 0)"


class SchemaError(ValueError):
    """A stored document of another schema version, or one that lacks a field."""


def status_kind(status: str) -> str:
    """``ok``, ``dead`` or ``failed`` for a record status."""
    if status == "ok":
        return "ok"
    if str(status).startswith("failed"):
        return "failed"
    return "dead"


def record_key(record) -> tuple:
    """(layer, feature, image_id, token, method, protocol) of a record (dict or Record)."""
    get = record.get if isinstance(record, dict) else lambda f: getattr(record, f)
    return tuple(get(f) for f in KEY_FIELDS)


def unit_key(record) -> tuple:
    """(layer, feature, image_id, token) of a record (dict or Record)."""
    return record_key(record)[: len(UNIT_FIELDS)]


def image_key(image_id) -> str:
    """A file-name-safe name of an image id: the integer itself, or ``h`` + 16 hex digits of the id's SHA-256
    for a string id (a path may hold ``/`` and other characters an archive member name should not)."""
    if isinstance(image_id, str):
        import hashlib

        return "h" + hashlib.sha256(image_id.encode()).hexdigest()[:16]
    return str(int(image_id))


def scores_key(layer: int, feature: int, image_id, token: int, method: str) -> str:
    """Name of a unit x method's patch scores in ``scores.npz`` (shared by its protocols)."""
    return f"L{layer}_f{feature}_i{image_key(image_id)}_t{token}_{method}"


def check_version(doc: dict, what: str) -> None:
    """Raise SchemaError unless ``doc`` carries this cafe_bench's ``schema_version``."""
    version = doc.get("schema_version", 1) if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION:
        raise SchemaError(
            f"{what} has schema version {version}, this cafe_bench reads {SCHEMA_VERSION}; "
            "regenerate it with this version (cafe-bench run / leaderboard --save)"
        )


def _from_dict(cls, doc: dict, what: str):
    if not isinstance(doc, dict):
        raise SchemaError(f"{what} is not a JSON object")
    check_version(doc, what)
    names = {f.name for f in fields(cls)}
    missing = [f.name for f in fields(cls) if f.name not in doc and _required(f)]
    if missing:
        raise SchemaError(f"{what} lacks field(s) {', '.join(missing)}")
    return cls(**{k: v for k, v in doc.items() if k in names})


def _required(f) -> bool:
    from dataclasses import MISSING

    return f.default is MISSING and f.default_factory is MISSING


@dataclass(frozen=True)
class Record:
    """One unit x method x protocol: the curve, its AUC and everything that produced it."""

    suite: str
    suite_version: str
    layer: int
    feature: int
    image_id: int | str
    token: int
    method: str
    method_params: dict
    """The method's configuration (``Attributor.params()``)."""
    method_source: str
    """Where the method came from: ``cafe-bench VERSION (built-in)``, ``DISTRIBUTION VERSION`` or ``module:Class``."""
    method_version: str | None
    """The version of the package that provides the method (recorded, not part of a comparison's identity)."""
    protocol: str
    higher_is_better: bool
    baseline: str
    steps: int
    seed: int
    """The unit's seed, derived from the run seed and the unit."""
    clean_activation: float
    status: str
    fractions: list | None
    curve: list | None
    auc: float | None
    scores_key: str | None
    """Key of the unit x method's patch scores in ``scores.npz`` (None when the method failed)."""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict, what: str = "record") -> Record:
        """Parse a stored record; raises SchemaError naming a wrong version or the missing fields."""
        return _from_dict(cls, doc, what)


RECORD_FIELDS = tuple(f.name for f in fields(Record))

IDENTITY_FIELDS = (
    "suite",
    "suite_version",
    "suite_files",
    "baseline",
    "blur_sigma",
    "steps",
    "precision",
    "normalisation",
    "auc",
)
"""Run-config fields that two runs must share for their curves to be compared or tabled together (the seed, the
unit set and method parameters are checked beside them)."""


@dataclass(frozen=True)
class RunConfig:
    """What a run computes; stored in ``run.json`` and compared on ``--resume``, merge and ``compare``."""

    suite: str
    suite_version: str
    suite_files: dict
    """SHA-256 of every suite file: model weights, SAE weights, feature set."""
    methods: list
    method_params: dict
    method_costs: dict
    protocols: list
    layers: list
    baseline: str
    blur_sigma: float
    steps: int
    seed: int
    normalisation: str
    auc: str
    method_sources: dict = field(default_factory=dict)
    """Method -> source and version; recorded, not part of the identity."""
    units: list | None = None
    """Explicit units (when not the suite's frozen feature set)."""
    shard: list | None = None
    """[i, n] when this run is shard i of n (``--shard``); merged runs have none."""
    precision: str | None = None
    """``bf16`` or ``fp16`` when the curves' forward passes ran under autocast (``--precision``); None: fp32."""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        out = asdict(self)
        for optional in ("units", "shard", "precision"):
            if out[optional] is None:
                del out[optional]
        return out

    @classmethod
    def from_dict(cls, doc: dict, what: str = "run config") -> RunConfig:
        return _from_dict(cls, doc, what)


@dataclass(frozen=True)
class BoardRow:
    """One method x layer x protocol of a leaderboard."""

    method: str
    layer: int
    protocol: str
    higher_is_better: bool
    n_units: int
    """Units the mean is taken over (ok units; for a ranked method, the units every ranked method finished)."""
    n_failed: int
    n_dead: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    ranked: bool
    """False when the method failed on any unit of this layer x protocol: shown, never best or tied."""
    best: bool
    tied: bool


BOARD_ROW_FIELDS = tuple(f.name for f in fields(BoardRow))
