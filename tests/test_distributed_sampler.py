"""DistributedSampler's contract, for any dataset length and world size (hypothesis), and
the sampler checks failing on planted broken samplers."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("hypothesis")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils.data import DistributedSampler  # noqa: E402

from reference.distributed import conformance  # noqa: E402


def shards(dataset_size: int, world: int, drop_last: bool, epoch: int = 0, seed: int = 0) -> list[list[int]]:
    found = []
    for rank in range(world):
        sampler = DistributedSampler(range(dataset_size), num_replicas=world, rank=rank, shuffle=True,
                                     seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        found.append(list(sampler))
    return found


def failed(found: list) -> set[str]:
    return {check.name for check in found if not check.passed}


@settings(max_examples=150, deadline=None)
@given(dataset_size=st.integers(1, 300), world=st.integers(1, 8), drop_last=st.booleans(),
       epoch=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_shards_are_disjoint_equal_and_cover_the_dataset(dataset_size: int, world: int, drop_last: bool,
                                                         epoch: int, seed: int) -> None:
    if drop_last and dataset_size < world:
        return  # nothing to hand out: every shard is empty, which the sampler allows
    found = conformance.sampler_checks(shards(dataset_size, world, drop_last, epoch, seed), dataset_size, drop_last)
    assert not failed(found), found


@settings(max_examples=60, deadline=None)
@given(dataset_size=st.integers(16, 300), world=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_set_epoch_reshuffles_and_forgetting_it_repeats_the_order(dataset_size: int, world: int, seed: int) -> None:
    """The job's global order (every rank's shard, in rank order) per epoch. At least 16
    examples, so two shuffles coincide with probability < 1e-13."""
    samplers = [DistributedSampler(range(dataset_size), num_replicas=world, rank=r, shuffle=True, seed=seed)
                for r in range(world)]
    with_set_epoch = []
    for epoch in range(3):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        with_set_epoch.append([i for sampler in samplers for i in sampler])
    forgetful = [DistributedSampler(range(dataset_size), num_replicas=world, rank=r, shuffle=True, seed=seed)
                 for r in range(world)]
    without = [[i for sampler in forgetful for i in sampler] for _ in range(3)]
    found = conformance.epoch_order_checks(with_set_epoch, without)
    assert not failed(found), found
    assert without[0] == without[1] == without[2]


def test_uneven_dataset_is_padded_by_repeating_the_first_indices() -> None:
    split = shards(10, 4, drop_last=False)
    assert [len(s) for s in split] == [3, 3, 3, 3]
    order = [split[r][i] for i in range(3) for r in range(4)]  # the padded global order
    assert order[10:] == order[:2]  # 12 slots for 10 examples: the first two come again
    assert sorted(set(order)) == list(range(10))


def contiguous_unpadded(dataset_size: int, world: int) -> list[list[int]]:
    """Planted bug: floor-sized contiguous blocks, silently dropping the remainder."""
    per = dataset_size // world
    return [list(range(r * per, (r + 1) * per)) for r in range(world)]


def every_rank_same_order(dataset_size: int, world: int) -> list[list[int]]:
    """Planted bug: each rank forgot its rank offset and takes indices 0, world, 2*world..."""
    return [list(range(0, dataset_size, world)) for _ in range(world)]


@pytest.mark.breaks("sampler.covers_dataset", "sampler.total_size")
def test_sampler_checks_fail_on_a_sampler_that_drops_the_remainder() -> None:
    assert {"sampler.covers_dataset", "sampler.total_size"} <= failed(
        conformance.sampler_checks(contiguous_unpadded(10, 4), 10, drop_last=False))


@pytest.mark.breaks("sampler.repeats_only_padding")
def test_sampler_checks_fail_on_overlapping_shards() -> None:
    assert "sampler.repeats_only_padding" in failed(
        conformance.sampler_checks(every_rank_same_order(12, 3), 12, drop_last=False))


@pytest.mark.breaks("sampler.set_epoch_changes_order")
def test_epoch_checks_fail_when_the_order_never_changes() -> None:
    order = list(range(20))
    assert failed(conformance.epoch_order_checks([order, order], [order, order])) == {
        "sampler.set_epoch_changes_order"}


def one_sided_padding(dataset_size: int, world: int) -> list[list[int]]:
    """Planted bug: the padding indices all given to the last rank (shards of unequal length)."""
    per = dataset_size // world
    shards = [list(range(r, per * world, world)) for r in range(world)]
    shards[-1] += list(range(per * world, dataset_size)) + list(range(-(-dataset_size // world) * world - dataset_size))
    return shards


def off_by_one_indices(dataset_size: int, world: int) -> list[list[int]]:
    """Planted bug: 1-based indices (index dataset_size is out of range, 0 never sampled)."""
    return [[i + 1 for i in shard] for shard in
            (list(range(r, dataset_size, world)) for r in range(world))]


@pytest.mark.breaks("sampler.equal_shards")
def test_sampler_checks_fail_on_shards_of_unequal_length() -> None:
    assert "sampler.equal_shards" in failed(conformance.sampler_checks(one_sided_padding(10, 4), 10, drop_last=False))


@pytest.mark.breaks("sampler.in_range")
def test_sampler_checks_fail_on_indices_outside_the_dataset() -> None:
    assert "sampler.in_range" in failed(conformance.sampler_checks(off_by_one_indices(12, 3), 12, drop_last=False))


@pytest.mark.breaks("sampler.without_set_epoch_order_repeats")
def test_epoch_checks_fail_when_the_order_changes_without_set_epoch() -> None:
    """Planted bug: a sampler reseeded from the clock, so the order moves without set_epoch
    (ranks would then disagree on the shuffle)."""
    first, second = list(range(20)), list(range(19, -1, -1))
    assert "sampler.without_set_epoch_order_repeats" in failed(
        conformance.epoch_order_checks([first, second], [first, second]))
