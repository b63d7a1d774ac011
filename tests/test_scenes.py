import numpy as np
import pytest

from cafe_bench.scenes import LABEL_NAMES, SceneConfig, make_images, make_scene, scene_labels


def test_scene_generator_is_deterministic():
    a, b = make_scene(7, 11), make_scene(7, 11)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.objects == b.objects
    assert not np.array_equal(make_scene(7, 11).image, make_scene(7, 12).image)
    assert not np.array_equal(make_scene(7, 11).image, make_scene(8, 11).image)


def test_image_ids_are_independent_of_order():
    together = make_images(3, [5, 2, 9])
    alone = make_images(3, [9])
    np.testing.assert_array_equal(together[2], alone[0])


def test_scene_is_valid_and_masks_do_not_overlap():
    config = SceneConfig()
    for i in range(30):
        scene = make_scene(0, i, config)
        assert scene.image.shape == (config.size, config.size, 3)
        assert scene.image.min() >= 0 and scene.image.max() <= 1
        assert config.min_objects - 1 <= len(scene.objects) <= config.max_objects
        assert scene.masks.shape[0] == len(scene.objects)
        assert scene.masks.sum(0).max() <= 1
        assert scene.labels.tolist() == _labels_by_hand(scene.objects)
        for mask, obj in zip(scene.masks, scene.objects, strict=True):
            # each object is drawn in its colour, shaded by its texture (x 1 or x 0.55), on exactly its mask
            assert mask.any()
            rgb = np.array(RGB[obj["colour"]], dtype=np.float32)
            pixels = scene.image[mask]
            full = np.abs(pixels - rgb).max(1) < 1e-6
            shaded = np.abs(pixels - 0.55 * rgb).max(1) < 1e-6
            assert (full | shaded).all()
            assert full.all() if obj["texture"] == "solid" else full.any() and shaded.any()


# the colours and label order of the scene spec, written out here rather than read from the module
RGB = {"red": (0.90, 0.15, 0.15), "green": (0.15, 0.75, 0.20), "blue": (0.15, 0.30, 0.95), "yellow": (0.95, 0.85, 0.10)}


def _labels_by_hand(objects) -> list[float]:
    shapes = [o["shape"] for o in objects]
    colours = [o["colour"] for o in objects]
    has = [float(s in shapes) for s in ("circle", "square", "triangle", "cross")]
    has += [float(c in colours) for c in ("red", "green", "blue", "yellow")]
    pairs = [float(any(shapes.count(s) > 1 for s in shapes)), float(any(colours.count(c) > 1 for c in colours))]
    return has + pairs


def test_labels_of_a_hand_made_scene():
    objects = [
        {"shape": "circle", "colour": "red"},
        {"shape": "circle", "colour": "blue"},
        {"shape": "cross", "colour": "green"},
    ]
    labels = dict(zip(LABEL_NAMES, scene_labels(objects), strict=True))
    assert labels["has_circle"] == 1 and labels["has_cross"] == 1 and labels["has_square"] == 0
    assert labels["has_red"] == 1 and labels["has_yellow"] == 0
    assert labels["same_shape_pair"] == 1 and labels["same_colour_pair"] == 0


def test_relation_labels_of_hand_made_scenes():
    from cafe_bench.scenes import RELATION_LABEL_NAMES

    def labels(objects):
        return dict(zip(RELATION_LABEL_NAMES, scene_labels(objects, "relations"), strict=True))

    red_left = [
        {"shape": "circle", "colour": "red", "centre": (10.0, 5.0)},
        {"shape": "circle", "colour": "red", "centre": (30.0, 40.0)},
        {"shape": "square", "colour": "blue", "centre": (20.0, 20.0)},
    ]
    got = labels(red_left)
    assert got["same_shape_and_colour_pair"] == 1 and got["red_left_of_blue"] == 1
    assert got["at_least_four_objects"] == 0 and got["has_square"] == 1
    red_right = [{**o, "centre": (o["centre"][0], 60.0)} if o["colour"] == "red" else o for o in red_left]
    red_right[1] = {**red_right[1], "shape": "cross"}
    got = labels(red_right + [{"shape": "cross", "colour": "green", "centre": (1.0, 1.0)}])
    assert got["red_left_of_blue"] == 0 and got["same_shape_and_colour_pair"] == 0
    assert got["at_least_four_objects"] == 1 and got["same_shape_pair"] == 1


def test_scene_config_refuses_an_unknown_task():
    with pytest.raises(ValueError, match="valid: presence, relations"):
        SceneConfig(task="counting")


def test_the_presence_task_is_what_tiny_was_trained_on():
    scene = make_scene(0, 7)
    assert scene.labels.shape == (len(LABEL_NAMES),)
    relations = make_scene(0, 7, SceneConfig(task="relations"))
    np.testing.assert_array_equal(relations.image, scene.image)
    np.testing.assert_array_equal(relations.labels[: len(LABEL_NAMES)], scene.labels)
