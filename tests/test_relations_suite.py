"""The shipped default suite `relations`: files, the stratified feature set, and a sample of its frozen reference
recomputed from the model (occlusion, exact Shapley values, greedy oracle)."""

import numpy as np
import pytest
import torch

from cafe_bench.locality import nonlocality, occlusion_effects
from cafe_bench.oracle import greedy_oracle, oracle_scores
from cafe_bench.protocols.engine import run_curves
from cafe_bench.reference import by_unit
from cafe_bench.shapley import exact_shapley
from cafe_bench.suites import DEFAULT_SUITE, load_suite


@pytest.fixture(scope="module")
def relations():
    return load_suite("relations")


def test_relations_is_the_default_and_ships_a_reference_for_every_unit(relations):
    assert DEFAULT_SUITE == "relations"
    assert relations.protocol_defaults == {"steps": 32, "baseline": "mean"}
    ref = relations.reference
    assert ref["baseline"] == "mean"
    assert [tuple(k) for k in by_unit(ref)] == [u.key() for u in relations.units()]
    assert len(relations.units()) == 72 and relations.layers == [1, 3, 5]


def test_the_natural_share_of_nonlocal_units_rises_with_depth(relations):
    stats = relations.feature_set["layers"]
    fractions = [stats[str(layer)]["candidate_nonlocal_fraction"] for layer in relations.layers]
    assert fractions[0] < fractions[-1]
    # the stratified draw keeps half of each layer's features from the non-local stratum
    assert all(stats[str(layer)]["n_nonlocal_features_kept"] == 6 for layer in relations.layers)


@pytest.fixture(scope="module")
def sample(relations):
    """Two units of the deepest layer, one of them the first unit the reference calls non-local."""
    ref = relations.reference["units"]
    far = next(i for i, u in enumerate(ref) if u["layer"] == 5 and (u["nonlocality"] or 0) > 0.5)
    near = next(i for i, u in enumerate(ref) if u["layer"] == 5 and (u["nonlocality"] or 0) < 0.5)
    units = [relations.units()[i] for i in (far, near)]
    return units, [ref[far], ref[near]], relations.target(units)


def test_a_sample_of_the_reference_is_recomputed_from_the_model(relations, sample):
    units, entries, target = sample
    np.testing.assert_allclose(target.clean.numpy(), [e["clean"] for e in entries], rtol=1e-5)
    effects = occlusion_effects(target)
    np.testing.assert_allclose(effects, [e["occlusion"] for e in entries], atol=1e-4)
    scores = nonlocality(effects, [u.token for u in units], target.grid)
    np.testing.assert_allclose(scores, [e["nonlocality"] for e in entries], atol=1e-5)
    phi = exact_shapley(target, [relations.players(u.image_id) for u in units])
    for got, entry in zip(phi, entries, strict=True):
        np.testing.assert_allclose(got, entry["shapley"], atol=1e-4)
    order, values = greedy_oracle(target, "deletion")
    for i, entry in enumerate(entries):
        np.testing.assert_array_equal(order[i], entry["oracle"]["deletion"]["order"])
        np.testing.assert_allclose(values[i], entry["oracle"]["deletion"]["values"], atol=1e-4)


def test_stored_oracle_curves_are_what_the_engine_measures_for_the_oracle_order(sample):
    _, entries, target = sample
    for protocol in ("insertion", "deletion"):
        order = np.array([e["oracle"][protocol]["order"] for e in entries])
        scores = torch.from_numpy(oracle_scores(order)).view(len(entries), *target.grid)
        curves = run_curves(target, scores, protocol, steps=32)
        stored = np.array([e["oracle"][protocol]["values"] for e in entries])[:, curves.counts]
        np.testing.assert_allclose(curves.activations, stored, atol=1e-4)


def test_an_edited_reference_value_is_refused(relations, tmp_path):
    import json
    import shutil

    from cafe_bench.errors import ChecksumError

    copy = tmp_path / "relations"
    shutil.copytree(relations.path, copy)
    doc = json.loads((copy / "reference.json").read_text())
    doc["units"][3]["shapley"][0] += 0.5
    (copy / "reference.json").write_text(json.dumps(doc))
    with pytest.raises(ChecksumError, match="reference.json"):
        load_suite(copy)


def test_the_stratified_rule_rebuilds_the_shipped_feature_set(relations):
    from cafe_bench.suites.build import RELATIONS, STREAMS
    from cafe_bench.suites.relations_build import StratifiedRules, build_stratified_feature_set

    saes = {layer: relations.saes[layer] for layer in relations.layers}
    doc = build_stratified_feature_set(
        relations.backbone, saes, STREAMS["featureset"], RELATIONS.scene_config, "mean", {}, StratifiedRules()
    )
    assert doc["units"] == relations.feature_set["units"]
    assert doc["layers"] == relations.feature_set["layers"]
    assert doc["sha256"] == relations.feature_set["sha256"]
