import itertools
import math

import numpy as np
import pytest
import torch

from cafe_bench.shapley import (
    agreement,
    distant_share,
    exact_shapley,
    player_masks,
    player_scores,
    shapley_from_values,
)


def _permutation_shapley(values, n):
    """Shapley values by their definition: the average marginal contribution over all n! player orders."""
    phi = np.zeros(n)
    for order in itertools.permutations(range(n)):
        coalition = 0
        for player in order:
            phi[player] += values[coalition | 1 << player] - values[coalition]
            coalition |= 1 << player
    return phi / math.factorial(n)


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_shapley_formula_equals_the_permutation_definition(n):
    values = np.random.default_rng(n).normal(size=2**n)
    phi = shapley_from_values(values, n)
    np.testing.assert_allclose(phi, _permutation_shapley(values, n), atol=1e-12)
    assert phi.sum() == pytest.approx(values[-1] - values[0])  # efficiency


def test_shapley_of_an_interaction_splits_it_equally():
    # v = 1 only when players 0 and 1 are both present; player 2 is a dummy
    values = np.array([float(s & 3 == 3) for s in range(8)])
    np.testing.assert_allclose(shapley_from_values(values, 3), [0.5, 0.5, 0.0])


def test_player_masks_add_the_background_and_cover_every_pixel_once():
    objects = np.zeros((2, 4, 4), dtype=bool)
    objects[0, :2, :2] = True
    objects[1, 3, 3] = True
    players = player_masks(objects)
    assert players.shape == (3, 4, 4)
    assert (players.sum(0) == 1).all()
    assert players[2].sum() == 16 - 4 - 1


def test_exact_shapley_of_an_additive_model_is_each_players_own_change(additive_target):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(2, 4, 4))
    images, baseline = rng.random((2, 3, 4, 4)), rng.random((2, 3, 4, 4))
    target = additive_target(weights, images, baseline)
    objects = np.zeros((2, 4, 4), dtype=bool)
    objects[0, :2, :3] = True
    objects[1, 2:, 3] = True
    players = [player_masks(objects), player_masks(objects[:1])]
    phi = exact_shapley(target, players, batch_size=3)  # batches that cut through units
    for u in range(2):
        delta = (images[u] - baseline[u]).sum(0) * weights[u]  # per-pixel change of z
        expected = [delta[m].sum() for m in players[u]]
        np.testing.assert_allclose(phi[u], expected, atol=1e-5)


def test_player_scores_spread_patches_by_pixel_share():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2, :2] = True  # all of patch (0, 0)
    masks[0, 2, 2] = True  # a quarter of patch (1, 1)
    masks[1] = ~masks[0]
    scores = np.array([[2.0, 0.0], [0.0, 4.0]])
    np.testing.assert_allclose(player_scores(scores, masks, patch_size=2), [2.0 + 1.0, 3.0])


def test_agreement_is_kendall_tau_and_nan_for_an_empty_map():
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0, :2, :2] = masks[1, :2, 2:] = True
    masks[2] = ~(masks[0] | masks[1])
    scores = np.array([[3.0, 2.0], [0.5, 0.5]])  # players: 3, 2, 1
    assert agreement(scores, masks, np.array([0.3, 0.2, 0.1]), 2) == pytest.approx(1.0)
    assert agreement(scores, masks, np.array([0.1, 0.2, 0.3]), 2) == pytest.approx(-1.0)
    assert np.isnan(agreement(np.zeros((2, 2)), masks, np.array([0.1, 0.2, 0.3]), 2))
    # a flat map is not flat over players: it favours the larger ones (background: 2 patches)
    assert agreement(np.ones((2, 2)), masks, np.array([0.1, 0.2, 0.3]), 2) > 0


def test_distant_share_counts_only_players_outside_the_neighbourhood():
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[1, 3, 3] = True
    masks[2] = ~(masks[0] | masks[1])
    near = np.zeros((4, 4), dtype=bool)
    near[:2, :2] = True  # touches player 0 and the background
    assert distant_share(np.array([1.0, 3.0, -2.0]), masks, near) == pytest.approx(0.75)
    assert np.isnan(distant_share(np.array([-1.0, 0.0, 0.0]), masks, near))


def test_exact_shapley_refuses_a_game_too_large_to_enumerate(additive_target):
    target = additive_target(np.ones((1, 4, 4)), np.ones((1, 3, 4, 4)), np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="stop at 12"):
        exact_shapley(target, [np.zeros((13, 4, 4), dtype=bool)])


def test_torch_is_not_needed_for_the_formula():
    assert shapley_from_values(torch.tensor([0.0, 1.0]).numpy(), 1).tolist() == [1.0]
