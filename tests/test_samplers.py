"""P x K identity batches: composition, seeding, coverage, and the split over DDP processes."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kface.errors import InputError
from kface.training.samplers import IdentityBatchSampler

# 10 identities: "a".."h" with 3 to 10 images, "lone" with one image (never drawn), "i" with 2.
IDENTITIES = [name for name, count in zip("abcdefgh", range(3, 11)) for _ in range(count)] + ["lone", "i", "i"]


def sampler(**settings) -> IdentityBatchSampler:
    return IdentityBatchSampler(IDENTITIES, **{"ids_per_batch": 4, "images_per_id": 4, "seed": 3, **settings})


def test_each_batch_holds_p_identities_with_k_distinct_images_each():
    for batch in sampler().epoch_batches(1):
        per_identity = Counter(IDENTITIES[i] for i in batch.items)
        assert len(per_identity) == 4
        for name, count in per_identity.items():
            assert count == min(4, IDENTITIES.count(name))
        assert len(set(batch.items.tolist())) == len(batch)  # no image twice
        assert "lone" not in per_identity
        codes = {IDENTITIES[i]: code for i, code in zip(batch.items, batch.labels)}
        assert len(set(codes.values())) == len(codes)  # labels tell the identities apart


def test_same_seed_and_epoch_draw_the_same_batches_and_others_differ():
    def items(s, epoch):
        return [b.items.tolist() for b in s.epoch_batches(epoch)]

    assert items(sampler(), 2) == items(sampler(), 2)
    assert items(sampler(), 2) != items(sampler(), 3)
    assert items(sampler(), 2) != items(sampler(seed=4), 2)


def test_the_global_numpy_generator_is_left_alone():
    state = np.random.get_state()[1].copy()
    sampler(mirror=True).epoch_batches(1)
    assert np.array_equal(np.random.get_state()[1], state)


def test_an_epoch_draws_each_identity_about_equally_often():
    s = sampler(ids_per_batch=3, images_per_id=2)
    draws = Counter(IDENTITIES[i] for batch in s.epoch_batches(1) for i in batch.items[::2])
    # 54 usable images / 6 per batch = 9 batches = 27 identity draws over 9 identities.
    assert s.batch_count() == 9
    assert set(draws) == set("abcdefghi") and max(draws.values()) - min(draws.values()) <= 1


@pytest.mark.parametrize("world_size", [2, 3])
def test_processes_split_one_global_list_into_equal_shares(world_size):
    s = sampler()
    shares = [s.epoch_batches(5, rank, world_size) for rank in range(world_size)]
    assert len({len(share) for share in shares}) == 1  # every process takes as many steps
    assert len(shares[0]) * world_size >= s.batch_count()
    global_list = s.sample(np.random.default_rng(np.random.SeedSequence([3, 5])), len(shares[0]) * world_size)
    for rank, share in enumerate(shares):
        assert [b.items.tolist() for b in share] == [b.items.tolist() for b in global_list[rank::world_size]]


def test_mirroring_is_drawn_per_image_only_when_asked():
    assert not any(batch.mirrored.any() for batch in sampler().epoch_batches(1))
    mirrored = np.concatenate([batch.mirrored for epoch in range(20)
                               for batch in sampler(mirror=True).epoch_batches(epoch)])
    assert 0.4 < mirrored.mean() < 0.6


def test_too_few_identities_or_bad_sizes_are_clear_errors():
    with pytest.raises(InputError, match="--ids-per-batch 10 needs at least 10 identities.*have 9"):
        sampler(ids_per_batch=10)
    with pytest.raises(InputError, match="--images-per-id must be an integer >= 2"):
        sampler(images_per_id=1)
    with pytest.raises(InputError, match="--seed"):
        sampler(seed=-1)


def test_batch_groups_fill_batches_with_whole_groups():
    """--batch-groups: identities come group by group, so a batch spans as few groups as its size allows."""
    names = [f"p{k}" for k in range(24) for _ in range(3)]
    families = [f"F{k // 4}" for k in range(24) for _ in range(3)]  # 6 families of 4 people
    grouped = IdentityBatchSampler(names, ids_per_batch=4, images_per_id=2, seed=1, batch_groups=families)
    spans = [len({families[i] for i in batch.items}) for batch in grouped.epoch_batches(0)]
    assert max(spans) <= 2 and spans.count(1) >= len(spans) // 2
    plain = IdentityBatchSampler(names, ids_per_batch=4, images_per_id=2, seed=1)
    assert np.mean([len({families[i] for i in b.items}) for b in plain.epoch_batches(0)]) > np.mean(spans)
    # Without groups the draws are what they always were (runs made before the option stay reproducible).
    again = IdentityBatchSampler(names, ids_per_batch=4, images_per_id=2, seed=1, batch_groups=None)
    assert all(np.array_equal(a.items, b.items) for a, b in zip(plain.epoch_batches(0), again.epoch_batches(0)))


def test_batch_groups_need_the_metric_loss():
    from kface.training.config import TrainConfig

    with pytest.raises(InputError, match="--batch-groups"):
        TrainConfig(out="x", pairs="p.csv", loss="bce", batch_groups="family")
