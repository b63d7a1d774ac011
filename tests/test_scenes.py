import numpy as np

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
        np.testing.assert_array_equal(scene.labels, scene_labels(scene.objects))


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
