import json
import shutil

import numpy as np
import pandas as pd
import pytest

import cafe_bench
from cafe_bench.cli import main
from cafe_bench.leaderboard import mark_best, render, summarize
from cafe_bench.results import ResultsError, read_run, read_runs

FAST = {"methods": ["activation", "random", "gradient"], "layers": [1, 5], "progress": False}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "blur"
    cafe_bench.run("tiny", out=out, **FAST)
    return out


def _copy(run_dir, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(run_dir, dst)
    return dst


def _row(method, protocol, mean, low, high, ranked=True):
    return {
        "method": method,
        "layer": 1,
        "protocol": protocol,
        "higher_is_better": protocol == "insertion",
        "n_units": 4,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "ranked": ranked,
    }


def test_best_and_ties_follow_the_protocol_direction():
    summary = pd.DataFrame(
        [
            _row("a", "insertion", 0.9, 0.8, 1.0),
            _row("b", "insertion", 0.85, 0.7, 0.82),
            _row("c", "insertion", 0.5, 0.4, 0.6),
            _row("d", "insertion", 0.99, 0.95, 1.0, ranked=False),  # highest mean, but it failed somewhere
            _row("a", "deletion", 0.5, 0.4, 0.6),
            _row("b", "deletion", 0.2, 0.1, 0.3),
            _row("c", "deletion", 0.3, 0.25, 0.5),
        ]
    )
    marked = mark_best(summary).set_index(["method", "protocol"])
    assert marked.loc[("a", "insertion"), "best"] and not marked.loc[("a", "insertion"), "tied"]
    assert marked.loc[("b", "insertion"), "tied"]  # 0.82 >= 0.8: overlaps
    assert not marked.loc[("c", "insertion"), "tied"] and not marked.loc[("c", "insertion"), "best"]
    assert not marked.loc[("d", "insertion"), "best"] and not marked.loc[("d", "insertion"), "tied"]
    assert marked.loc[("b", "deletion"), "best"]  # lower is better
    assert marked.loc[("c", "deletion"), "tied"] and not marked.loc[("a", "deletion"), "tied"]


def test_summary_reproduces_from_the_stored_records(run_dir):
    records, _ = read_run(run_dir)
    summary = summarize(records, n_resamples=300)
    row = summary[(summary.method == "gradient") & (summary.layer == 5) & (summary.protocol == "insertion")].iloc[0]
    units = records[(records.method == "gradient") & (records.layer == 5) & (records.protocol == "insertion")]
    assert row["mean"] == pytest.approx(units["auc"].mean())
    assert row["n_units"] == len(units) == 32
    assert row["ci_low"] < row["mean"] < row["ci_high"]


@pytest.mark.parametrize("fmt", ["md", "csv", "latex", "html"])
def test_leaderboard_formats(run_dir, fmt, capsys):
    assert main(["leaderboard", str(run_dir), "--format", fmt, "--n-resamples", "200"]) == 0
    out = capsys.readouterr().out
    if fmt == "md":
        assert "| method" in out and "**" in out and "L5 insertion" in out
    elif fmt == "csv":
        header = out.splitlines()[0].split(",")
        assert header[:5] == ["method", "layer", "protocol", "higher_is_better", "n_units"]
        assert {"n_failed", "n_dead", "ci_high", "ranked", "best", "tied"} <= set(header)
        assert len(out.splitlines()) == 1 + 3 * 2 * 2
    elif fmt == "latex":
        assert "\\toprule" in out and "\\midrule" in out and "\\bottomrule" in out and "\\textbf{" in out
    else:
        assert out.startswith("<!DOCTYPE html>") and "<b>" in out
        assert "<script" not in out and "<link" not in out and "http" not in out


def test_bad_format_and_layout_exit_2(run_dir, capsys):
    assert main(["leaderboard", str(run_dir), "--format", "pdf"]) == 2
    assert "valid: md, csv, latex, html" in capsys.readouterr().err
    assert main(["leaderboard", str(run_dir), "--by", "feature"]) == 2


def test_empty_truncated_or_incomplete_results_name_file_and_line(run_dir, tmp_path, capsys):
    empty = _copy(run_dir, tmp_path, "empty")
    (empty / "results.jsonl").write_text("")
    with pytest.raises(ResultsError, match="holds no records"):
        read_run(empty)
    broken = _copy(run_dir, tmp_path, "broken")
    lines = (broken / "results.jsonl").read_text().splitlines(keepends=True)
    lines[3] = lines[3][:40] + "\n"
    (broken / "results.jsonl").write_text("".join(lines))
    with pytest.raises(ResultsError, match=r"results.jsonl:4: not a JSON record"):
        read_run(broken)
    missing = _copy(run_dir, tmp_path, "missing")
    lines = (missing / "results.jsonl").read_text().splitlines(keepends=True)
    rec = json.loads(lines[6])
    del rec["auc"]
    lines[6] = json.dumps(rec) + "\n"
    (missing / "results.jsonl").write_text("".join(lines))
    assert main(["leaderboard", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "results.jsonl:7: record lacks field(s) auc" in err and err.count("\n") == 1
    assert main(["leaderboard", str(tmp_path / "nowhere")]) == 2


def test_a_partial_last_line_is_ignored_with_a_warning(run_dir, tmp_path):
    cut = _copy(run_dir, tmp_path, "cut")
    n = len(read_run(run_dir)[0])
    with open(cut / "results.jsonl", "a") as fh:
        fh.write('{"layer": 1, "feature": 3')
    with pytest.warns(UserWarning, match="partially written last line"):
        records, _ = read_run(cut)
    assert len(records) == n


def test_runs_of_different_configs_cannot_share_a_table(run_dir, tmp_path):
    other = tmp_path / "zero"
    cafe_bench.run("tiny", out=other, baseline="zero", methods=["activation"], layers=[1], progress=False)
    with pytest.raises(ResultsError, match='cannot share one table: baseline "zero" vs "blur"'):
        read_runs([run_dir, other])
    with pytest.raises(ResultsError, match="stored in more than one run"):
        read_runs([run_dir, _copy(run_dir, tmp_path, "twin")])


def test_runs_of_different_seeds_or_units_are_refused_unless_allowed(run_dir, tmp_path, capsys):
    seed1 = tmp_path / "seed1"
    cafe_bench.run("tiny", out=seed1, seed=1, methods=["grad_x_input"], layers=[1, 5], progress=False)
    assert main(["leaderboard", str(run_dir), str(seed1)]) == 2
    err = capsys.readouterr().err
    assert "cannot share one table: seed 1 vs 0 (pass --allow-mixed" in err and err.count("\n") == 1
    assert main(["leaderboard", str(run_dir), str(seed1), "--allow-mixed", "--n-resamples", "50"]) == 0
    capsys.readouterr()
    layer1 = tmp_path / "layer1"
    cafe_bench.run("tiny", out=layer1, methods=["grad_x_input"], layers=[1], progress=False)
    assert main(["leaderboard", str(run_dir), str(layer1)]) == 2
    assert "layers [1] vs [1, 5]" in capsys.readouterr().err
    # same config, but one run is unfinished (killed): its unit set differs
    partial = tmp_path / "partial"
    cafe_bench.run("tiny", out=partial, methods=["grad_x_input"], layers=[1, 5], progress=False)
    lines = (partial / "results.jsonl").read_text().splitlines(keepends=True)
    (partial / "results.jsonl").write_text("".join(lines[:-2]))  # the last two deletion records are missing
    assert main(["leaderboard", str(run_dir), str(partial)]) == 2
    assert "unit set of deletion (62 units vs 64, 2 differ; an unfinished run?)" in capsys.readouterr().err
    # a merged table's config lists every run's methods, so the board names them all
    records, doc = read_runs([run_dir, seed1], allow_mixed=True)
    assert doc["config"]["methods"] == ["activation", "random", "gradient", "grad_x_input"]


def test_failed_methods_are_shown_unranked_and_ranking_uses_common_units(run_dir):
    records, _ = read_run(run_dir)
    sel = (records.method == "gradient") & (records.layer == 1) & (records.protocol == "insertion")
    first = records[sel].index[:3]
    broken = records.copy()
    broken.loc[first, "status"] = "failed: attributor 'gradient' raised ValueError: x"
    broken.loc[first, "auc"] = None
    dead = records[(records.layer == 5) & (records.feature == records[records.layer == 5].feature.iloc[0])]
    broken.loc[dead.index, "status"] = "skipped: dead feature (z_k of the clean image is 0)"
    summary = summarize(broken, n_resamples=100).set_index(["method", "layer", "protocol"])
    row = summary.loc[("gradient", 1, "insertion")]
    assert not row["ranked"] and not row["best"] and not row["tied"]
    assert (row["n_failed"], row["n_dead"], row["n_units"]) == (3, 0, 29)
    ok = records[sel].iloc[3:]
    assert row["mean"] == pytest.approx(ok["auc"].mean())  # its own ok units, shown for information
    assert summary.loc[("activation", 1, "insertion"), "ranked"]
    assert summary.loc[("activation", 1, "insertion"), "n_units"] == 32
    n_dead = len(dead[(dead.method == "random") & (dead.protocol == "deletion")])
    assert summary.loc[("random", 5, "deletion"), "n_dead"] == n_dead > 0
    assert summary.loc[("random", 5, "deletion"), "n_units"] == 32 - n_dead
    text = render(summary.reset_index(), "md")
    assert "(3 failed, unranked)" in text


def test_mixed_runs_rank_on_the_units_every_ranked_method_finished(tmp_path, suite):
    units = suite.units([1])
    a, b = tmp_path / "a", tmp_path / "b"
    cafe_bench.run("tiny", out=a, methods=["activation"], units=units[:6], progress=False)
    cafe_bench.run("tiny", out=b, methods=["random"], units=units[3:10], progress=False)
    with pytest.raises(ResultsError, match="explicit|units"):
        read_runs([a, b])
    records, _ = read_runs([a, b], allow_mixed=True)
    summary = summarize(records, n_resamples=50).set_index(["method", "protocol"])
    common = {u.key() for u in units[3:6]}
    for method in ("activation", "random"):
        row = summary.loc[(method, "insertion")]
        assert row["ranked"] and row["n_units"] == len(common) == 3
        mine = records[(records.method == method) & (records.protocol == "insertion")]
        keys = list(zip(mine.layer, mine.feature, mine.image_id, mine.token, strict=True))
        expected = mine[[k in common for k in keys]]["auc"].mean()
        assert row["mean"] == pytest.approx(expected)


def test_plugin_and_builtin_runs_merge_into_one_board(run_dir, tmp_path, capsys):
    extra = tmp_path / "extra"
    cafe_bench.run("tiny", out=extra, methods=["grad_x_input"], layers=[1, 5], progress=False)
    records, _ = read_runs([run_dir, extra])
    assert set(records["method"]) == {"activation", "random", "gradient", "grad_x_input"}
    assert main(["leaderboard", str(run_dir), str(extra), "--by", "layer"]) == 0
    assert "grad_x_input" in capsys.readouterr().out


def test_baseline_agreement_is_kendall_tau_of_method_means(run_dir, tmp_path, capsys):
    from scipy.stats import kendalltau

    from cafe_bench.sensitivity import baseline_agreement

    zero = tmp_path / "zero"
    cafe_bench.run("tiny", out=zero, baseline="zero", **FAST)
    table = baseline_agreement([run_dir, zero])
    assert set(table["protocol"]) == {"insertion", "deletion"} and (table["n_methods"] == 3).all()
    a, b = read_run(run_dir)[0], read_run(zero)[0]
    for protocol in ("insertion", "deletion"):
        ma = a[a.protocol == protocol].groupby("method")["auc"].mean()
        mb = b[b.protocol == protocol].groupby("method")["auc"].mean().reindex(ma.index)
        row = table[table.protocol == protocol].iloc[0]
        assert row["kendall_tau"] == pytest.approx(kendalltau(ma.to_numpy(), mb.to_numpy())[0])
        assert {row["baseline_a"], row["baseline_b"]} == {"blur", "zero"}
    assert main(["baselines", str(run_dir), str(zero)]) == 0
    assert "kendall_tau" in capsys.readouterr().out
    with pytest.raises(ResultsError, match="at least two different baselines"):
        baseline_agreement([run_dir])


def test_render_rejects_unknown_format():
    with pytest.raises(ValueError, match="valid: md, csv, latex, html"):
        render(pd.DataFrame(), "pdf")
    dead = summarize(
        pd.DataFrame(
            {
                "method": ["a"],
                "layer": [1],
                "protocol": ["insertion"],
                "status": ["skipped: dead feature"],
                "auc": [None],
                "feature": [1],
                "image_id": [0],
                "token": [0],
            }
        )
    )
    assert np.isnan(dead["mean"][0]) and dead["n_dead"][0] == 1 and dead["n_failed"][0] == 0


def test_paired_comparisons_are_oriented_and_holm_adjusted(run_dir, capsys):
    from cafe_bench.leaderboard import paired_comparisons

    records, _ = read_run(run_dir)
    twin = records[records.method == "activation"].assign(method="activation_twin")
    table = paired_comparisons(pd.concat([records, twin]), "activation", n_resamples=300)
    same = table[table.method == "activation_twin"]
    assert (same["better_by"] == 0).all() and (same["prob_improvement"] == 0.5).all()
    # Holm by hand over the whole table: sort, scale by (m - rank), running max, cap at 1
    p = table["p_value"].to_numpy()
    order = np.argsort(p, kind="stable")
    expected, running = np.empty_like(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        expected[i] = running
    np.testing.assert_allclose(table["p_holm"].to_numpy(), expected, rtol=1e-12)
    for protocol, sign in [("insertion", 1), ("deletion", -1)]:
        row = table[(table.method == "random") & (table.layer == 5) & (table.protocol == protocol)].iloc[0]
        sel = records[(records.layer == 5) & (records.protocol == protocol)]
        diff = sel[sel.method == "random"]["auc"].mean() - sel[sel.method == "activation"]["auc"].mean()
        assert row["better_by"] == pytest.approx(sign * diff)
    assert main(["paired", str(run_dir), "--n-resamples", "200"]) == 0
    assert "prob_improvement" in capsys.readouterr().out
    assert main(["paired", str(run_dir), "--reference", "nope"]) == 2
    assert "reference method 'nope' is not in the results" in capsys.readouterr().err


def test_baselines_refuse_runs_that_differ_in_more_than_the_baseline(run_dir, tmp_path):
    from cafe_bench.sensitivity import baseline_agreement

    other = tmp_path / "zero8"
    cafe_bench.run("tiny", out=other, baseline="zero", steps=8, **FAST)
    with pytest.raises(ResultsError, match="steps differs"):
        baseline_agreement([run_dir, other])


def test_file_system_mistakes_exit_2(run_dir, tmp_path, capsys):
    assert main(["leaderboard", str(run_dir), "--save", str(tmp_path / "missing" / "stem")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["plot", str(run_dir), "--out", str(blocker), "--n-resamples", "50"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
