"""The seeded degradations behind bench/domain_shift.py."""
import numpy as np
import pytest

from kface.datasets.degradations import DEGRADATIONS, capture_condition, old_photo, tight_crop


@pytest.fixture
def portrait() -> np.ndarray:
    """A 250×250 RGB image with structure everywhere (a gradient plus seeded noise)."""
    ramp = np.linspace(40, 220, 250)
    image = ramp[None, :, None] + ramp[:, None, None] * 0.2 + np.random.default_rng(3).normal(0, 10, (250, 250, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_each_degradation_is_a_seeded_128_px_crop(portrait, name):
    degrade = DEGRADATIONS[name]
    first = degrade(portrait, np.random.default_rng([0, 7]))
    assert first.shape == (128, 128, 3) and first.dtype == np.uint8
    assert np.array_equal(first, degrade(portrait, np.random.default_rng([0, 7])))
    others = [degrade(portrait, np.random.default_rng([seed, 7])) for seed in range(1, 6)]
    assert any(not np.array_equal(first, other) for other in others)


def test_old_photo_is_grey_or_sepia(portrait):
    for seed in range(8):
        picture = old_photo(tight_crop(portrait), np.random.default_rng(seed)).astype(int)
        red, green, blue = picture[..., 0].mean(), picture[..., 1].mean(), picture[..., 2].mean()
        # Grey: channels equal up to JPEG's chroma rounding; sepia: red > green > blue.
        assert (abs(red - green) < 3 and abs(green - blue) < 3) or red > green > blue


def test_capture_conditions_each_change_the_face_their_own_way(portrait):
    crop = tight_crop(portrait).astype(float)
    seen = set()
    for seed in range(40):
        changed = capture_condition(tight_crop(portrait), np.random.default_rng(seed)).astype(float)
        eyes, top = slice(43, 66), slice(0, 38)
        if np.array_equal(changed, crop):
            seen.add("none")
        elif changed[eyes, 20:100].mean() < 0.2 * crop[eyes, 20:100].mean() and np.allclose(changed[80:], crop[80:]):
            seen.add("sunglasses")
        elif changed[top].mean() < 0.3 * crop[top].mean() + 20 and np.allclose(changed[60:], crop[60:]):
            seen.add("hat shadow")
        else:  # side light: one edge darkened to a fifth, the other brightened
            left, right = changed[:, :4].mean() / crop[:, :4].mean(), changed[:, -4:].mean() / crop[:, -4:].mean()
            assert min(left, right) < 0.3 and max(left, right) > 1.0
            seen.add("side light")
    assert seen == {"none", "sunglasses", "hat shadow", "side light"}
