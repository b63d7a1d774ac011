"""One self-contained HTML page for a run: the board, the validity checks, the curves and a few units' maps.

The page has no external resource: figures are PNG data URIs, the CSS is inline, there is no JavaScript. It
reads the run directory (``results.jsonl``, ``run.json``) and ``DIR/validity.json`` written by
:func:`cafe_bench.validity.write_validity`.

>>> from cafe_bench.report import write_report
>>> write_report("runs/tiny", "runs/tiny/report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from pathlib import Path

import matplotlib as mpl
import pandas as pd
from matplotlib.figure import Figure

from cafe_bench.errors import CafeBenchError
from cafe_bench.files import write_text_atomic
from cafe_bench.leaderboard import render, summarize
from cafe_bench.results import read_run
from cafe_bench.schema import UNIT_FIELDS
from cafe_bench.validity import VALIDITY_FILE, read_validity

_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1em}"
    "th,td{padding:4px 10px;border-bottom:1px solid #ccc;text-align:left}"
    "th{background:#f4f4f4}tr.flagged td{background:#fde2e2;color:#8b0000;font-weight:bold}"
    "img{max-width:100%;height:auto;display:block;margin:0.5em 0}"
    "p.note{color:#555;font-style:italic}p.warn{color:#8b0000}dt{font-weight:bold}"
)


def _load_validity(run_dir: Path, config: dict) -> dict:
    doc = read_validity(run_dir)
    if doc.get("suite") != config.get("suite"):
        raise CafeBenchError(
            f"{run_dir / VALIDITY_FILE} is of suite {doc.get('suite')!r}, the run of {config.get('suite')!r}; "
            f"rerun `cafe-bench validity {run_dir}`"
        )
    return doc


# ------------------------------------------------------------------------------------------------ html pieces


def _e(value) -> str:
    return html.escape(str(value))


def _num(value, digits: int = 3) -> str:
    """A number to ``digits`` decimals; None and NaN read ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(headers, rows, flagged=None) -> str:
    """An HTML table of plain-text cells (escaped here); rows whose ``flagged`` entry is true get class flagged."""
    flagged = flagged or [False] * len(rows)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        ('<tr class="flagged">' if flag else "<tr>") + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>"
        for row, flag in zip(rows, flagged, strict=True)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _p(text: str, cls: str | None = None) -> str:
    return f'<p class="{cls}">{_e(text)}</p>' if cls else f"<p>{_e(text)}</p>"


def _png_uri(fig: Figure) -> str:
    """``fig`` as a base64 PNG data URI (Agg canvas, the project's style); the figure is cleared afterwards."""
    from cafe_bench.plots.style import _STYLE

    buf = io.BytesIO()
    with mpl.rc_context(_STYLE):
        fig.savefig(buf, format="png")
    fig.clear()
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return f'<img src="{_png_uri(fig)}" alt="{_e(alt)}">'


def _why(doc: dict, *words: str, default: str, what: str = "Not available") -> str:
    """Why a validity entry is missing: the notes that mention any of ``words``, or ``default``."""
    notes = [str(n) for n in doc.get("notes") or []]
    picked = [n for n in notes if any(w in n for w in words)]
    return f"{what}: " + ("; ".join(picked) if picked else default) + "."


# ---------------------------------------------------------------------------------------------------- sections


def _header(records: pd.DataFrame, run_doc: dict, doc: dict) -> str:
    config, prov = run_doc["config"], run_doc.get("provenance") or {}
    n_units = len(records.drop_duplicates(list(UNIT_FIELDS)))
    items = [
        ("suite", f"{doc.get('suite', config.get('suite'))} (version {config.get('suite_version', 'n/a')})"),
        ("baseline", config.get("baseline")),
        ("steps", config.get("steps")),
        ("methods", ", ".join(config.get("methods") or doc.get("methods") or [])),
        ("protocols", ", ".join(config.get("protocols") or [])),
        ("layers", ", ".join(map(str, config.get("layers") or []))),
        ("units", n_units),
        ("started", run_doc.get("started", "n/a")),
        ("wall time (s)", run_doc.get("wall_time_s", "n/a")),
        ("status", run_doc.get("status", "n/a")),
        ("cafe_bench version", prov.get("cafe_bench_version", "n/a")),
        ("git commit", prov.get("git_commit") or "n/a"),
        ("device", f"{prov.get('device', 'n/a')} ({prov.get('device_name', 'n/a')})"),
    ]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    out = f"<h1>cafe_bench report: {_e(config.get('suite'))}</h1>"
    out += _p("A run of attribution methods explaining SAE features; its settings and provenance (run.json):")
    out += f"<dl>{rows}</dl>"
    stale = sorted(set(records.loc[records["status"] == "ok", "method"]) ^ set(doc.get("methods") or []))
    if stale:
        out += _p(
            f"validity.json differs from the run in methods {', '.join(stale)}: rerun cafe-bench validity.", "warn"
        )
    if doc.get("notes"):
        out += "<h3>Notes from validity.json</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in doc["notes"]) + "</ul>"
    return out


def _board(records: pd.DataFrame, n_resamples: int, seed: int) -> str:
    page = render(summarize(records, n_resamples=n_resamples, seed=seed), fmt="html")
    body = re.search(r"<body>(.*)</body>", page, flags=re.DOTALL)
    out = "<h2>1. Leaderboard</h2>"
    out += _p(
        f"Mean AUC per method, layer and protocol with a 95% clustered bootstrap CI ({n_resamples} resamples, "
        "features then units within them)."
    )
    return out + (body.group(1) if body else page)


def _normalised(doc: dict) -> str:
    out = "<h2>2. Normalised AUC and oracle</h2>"
    out += _p(
        "Normalised AUC = (AUC - random) / (oracle - random): 0 is the random control, 1 the greedy oracle; "
        "with a clustered bootstrap CI over the units shared by the method, random and the oracle."
    )
    layers = sorted(doc["layers"].items(), key=lambda kv: int(kv[0]))
    rows, oracle = [], []
    for layer, entry in layers:
        for protocol, methods in sorted((entry.get("normalised_auc") or {}).items()):
            for method, v in sorted((methods or {}).items()):
                ci = f"{_num(v.get('mean'))} [{_num(v.get('ci_low'))}, {_num(v.get('ci_high'))}]"
                rows.append([layer, protocol, method, ci, v.get("n_units", "n/a")])
        for protocol, mean in sorted((entry.get("oracle_auc") or {}).items()):
            oracle.append([layer, protocol, _num(mean)])
    why = _why(doc, "ground truth", "oracle", default="validity.json has no normalised AUC")
    out += (
        _table(["layer", "protocol", "method", "normalised AUC [95% CI]", "units"], rows) if rows else _p(why, "note")
    )
    out += "<h3>Oracle AUC</h3>" + _p("Mean AUC of the greedy oracle curves per layer and protocol.")
    return out + (_table(["layer", "protocol", "oracle AUC"], oracle) if oracle else _p(why, "note"))


def _sanity(doc: dict) -> str:
    from cafe_bench.sanity import DEFAULT_THRESHOLD

    out = "<h2>3. Sanity check (model randomisation)</h2>"
    out += _p(
        "Median Spearman rho between a method's maps on the trained model and on the model with every block up "
        f"to the layer redrawn. A method is flagged when |median rho| > {DEFAULT_THRESHOLD}: its maps barely "
        "depend on the model. The random control must be flagged."
    )
    rows, flagged = [], []
    for layer, entry in sorted(doc["layers"].items(), key=lambda kv: int(kv[0])):
        for method, v in sorted((entry.get("sanity") or {}).items()):
            flag = v.get("flagged")
            rows.append([layer, method, _num(v.get("median_rho")), v.get("n_units", "n/a"), _flag_text(flag)])
            flagged.append(bool(flag))
    if not rows:
        return out + _p(_why(doc, "sanity", default="validity.json has no sanity entries"), "note")
    return out + _table(["layer", "method", "median rho", "units", "flag"], rows, flagged)


def _flag_text(flag) -> str:
    return "FLAGGED" if flag else ("ok" if flag is not None else "n/a (no defined correlation)")


def _nonlocality(doc: dict) -> str:
    from cafe_bench.plots.validity import nonlocality_figure

    crit = doc.get("criterion") or {}
    out = "<h2>4. Non-locality</h2>"
    out += _p(
        f"A unit is non-local when its score ({crit.get('score', 'n/a')}) exceeds {crit.get('threshold', 'n/a')}, "
        f"the neighbourhood being the patches within Chebyshev distance {crit.get('radius', 'n/a')} of the token."
    )
    candidates = doc.get("candidate_nonlocal_fraction") or {}
    layers = sorted(doc["layers"].items(), key=lambda kv: int(kv[0]))
    rows = [[k, v.get("n_units", "n/a"), _num(v.get("nonlocal_fraction")), _num(candidates.get(k))] for k, v in layers]
    out += _table(["layer", "units", "non-local fraction", "candidate fraction (feature set)"], rows)
    if not candidates:
        out += _p("The suite's feature set records no candidate non-local fraction.", "note")
    out += _img(nonlocality_figure(doc), "share of non-local units per layer")
    check = doc.get("nonlocality_check")
    if check:
        out += _p(
            f"The criterion against the exact truth ({check.get('truth', 'n/a')}) on the reference's "
            f"{check.get('n_units', 'n/a')} units: precision {_num(check.get('precision'))}, recall "
            f"{_num(check.get('recall'))} (tp {check.get('tp')}, fp {check.get('fp')}, fn {check.get('fn')}, "
            f"tn {check.get('tn')})."
        )
    else:
        what = "Precision and recall of the criterion not available"
        out += _p(_why(doc, "ground truth", "reference", default="no reference", what=what), "note")
    out += "<h3>Agreement with exact ground truth</h3>"
    out += _p(
        "gt agreement: mean Kendall tau between a method's map aggregated to objects and the exact object-level "
        "Shapley values. Kendall tau per protocol: between the methods' ranking by mean AUC and by gt agreement."
    )
    methods = sorted({m for _, v in layers for m in v.get("gt_agreement") or {}})
    protocols = sorted({p for _, v in layers for p in v.get("kendall_tau") or {}})
    rows = []
    for k, v in layers:
        if v.get("gt_agreement") is None and v.get("kendall_tau") is None:
            continue
        gt, tau = v.get("gt_agreement") or {}, v.get("kendall_tau") or {}
        rows.append([k, *(_num(gt.get(m)) for m in methods), *(_tau_text(tau.get(p)) for p in protocols)])
    headers = ["layer", *(f"gt agreement {m}" for m in methods), *(f"Kendall tau {p}" for p in protocols)]
    why = _why(doc, "ground truth", default="validity.json has no ground truth")
    return out + (_table(headers, rows) if rows else _p(why, "note"))


def _tau_text(value) -> str:
    if not value:
        return "n/a"
    return f"{_num(value.get('tau'))} (p {_num(value.get('p_value'))}, {value.get('n_methods', 'n/a')} methods)"


def _curves(records: pd.DataFrame, config: dict, n_resamples: int, seed: int) -> str:
    from cafe_bench.plots import curves_figure

    ok = records[records["status"] == "ok"]
    present = list(dict.fromkeys(ok["protocol"]))
    protocols = [p for p in config.get("protocols", present) if p in present]
    out = "<h2>5. Curves</h2>"
    out += _p(
        "Mean normalised activation z_k / z_k(clean) per method against the fraction of patches perturbed, all "
        "layers pooled, with a 95% clustered bootstrap band."
    )
    if not protocols:
        return out + _p("No record has status ok: no curves.", "note")
    for protocol in protocols:
        fig = curves_figure(records, protocol, n_resamples=n_resamples, seed=seed)
        out += _img(fig, f"{protocol} curves")
    return out


def _most_nonlocal_first(ok, doc: dict):
    score = {tuple(u[f] for f in UNIT_FIELDS): u.get("nonlocality") for u in doc.get("unit_nonlocality") or []}
    keys = [
        tuple(v if isinstance(v, str) else int(v) for v in k) for k in ok[list(UNIT_FIELDS)].itertuples(index=False)
    ]
    values = [score.get(k) for k in keys]
    rank = [-(v if v is not None else -1.0) for v in values]
    return ok.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank")


def _units(records, run_doc, run_dir, suite, n_units: int, progress: bool, doc: dict) -> str:
    from tqdm.auto import tqdm

    from cafe_bench.plots import _load_run_suite, run_unit_figure
    from cafe_bench.suites import Suite, check_run_files, load_suite
    from cafe_bench.target import Unit

    config = run_doc["config"]
    out = "<h2>6. Activation and ERF maps</h2>"
    out += _p(
        "Per unit: the image, the feature's activation map and each method's ERF map (scores divided by their "
        "largest absolute value), the unit's token boxed."
    )
    ok = records[records["status"] == "ok"].drop_duplicates(list(UNIT_FIELDS))
    if n_units <= 0 or ok.empty:
        return out + _p("No units shown (n_units = 0 or no record with status ok).", "note")
    ok = _most_nonlocal_first(ok, doc)
    out += _p(
        "Units in decreasing order of their non-locality score (validity.json's unit_nonlocality): the ones whose "
        "causes lie furthest from the token they fire at come first.",
        "note",
    )
    if suite is None:
        suite = _load_run_suite(config, records, run_dir)
    else:
        suite = suite if isinstance(suite, Suite) else load_suite(suite)
        check_run_files(suite, config, run_dir / "run.json")
    methods = list(config.get("methods") or dict.fromkeys(records["method"]))
    for _, row in tqdm(
        ok.head(n_units).iterrows(), total=min(n_units, len(ok)), desc="report units", disable=not progress
    ):
        image = row["image_id"] if isinstance(row["image_id"], str) else int(row["image_id"])
        unit = Unit(int(row["layer"]), int(row["feature"]), image, int(row["token"]))
        fig = run_unit_figure(suite, unit, methods, config, records)
        out += _img(fig, f"layer {unit.layer} feature {unit.feature} image {unit.image_id} token {unit.token}")
    return out


# ---------------------------------------------------------------------------------------------------- the page


def report_html(
    run_dir, suite=None, n_units: int = 3, progress: bool = False, n_resamples: int = 1000, seed: int = 0
) -> str:
    """The report page of ``run_dir`` as one HTML string (see :func:`write_report` for the arguments)."""
    run_dir = Path(run_dir)
    records, run_doc = read_run(run_dir)
    doc = _load_validity(run_dir, run_doc["config"])
    sections = [
        _header(records, run_doc, doc),
        _board(records, n_resamples, seed),
        _normalised(doc),
        _sanity(doc),
        _nonlocality(doc),
        _curves(records, run_doc["config"], n_resamples, seed),
        _units(records, run_doc, run_dir, suite, n_units, progress, doc),
    ]
    title = _e(f"cafe_bench report: {run_doc['config'].get('suite')}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def write_report(
    run_dir,
    out_path,
    suite=None,
    n_units: int = 3,
    progress: bool = False,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Path:
    """Write one self-contained HTML page for the run in ``run_dir`` to ``out_path`` (atomic).

    Args:
        run_dir: a directory written by ``cafe-bench run --out`` that holds ``validity.json``.
        out_path: the HTML file to write (its directory is created).
        suite: the run's suite, a Suite, name or directory (default: the suite named in run.json); used for
            the unit figures only.
        n_units: units whose activation and ERF maps are shown (default 3; 0 shows none).
        progress: show a progress bar over the unit figures (default False).
        n_resamples: bootstrap replicates of the board and the curve bands (default 1000).
        seed: bootstrap seed (default 0).
    Returns:
        ``out_path``.
    Raises:
        CafeBenchError if the run cannot be read or ``validity.json`` is missing (run ``cafe-bench validity``).

    >>> write_report("runs/tiny", "runs/tiny/report.html")  # doctest: +SKIP
    """
    page = report_html(run_dir, suite, n_units, progress, n_resamples, seed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_path, page)
    return out_path


__all__ = ["report_html", "write_report"]
