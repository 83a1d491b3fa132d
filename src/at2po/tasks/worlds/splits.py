"""Train, dev and test sets from disjoint worlds.

Each split is its own world, generated from its own seed and drawing names from its own partition
(:mod:`at2po.tasks.worlds.names`): no entity name, first name, surname, city or title word of the
test world occurs in the train or dev world, so a policy cannot pass the test by remembering
training facts. It has to search.
"""

from __future__ import annotations

import zlib

from at2po.tasks.worlds.generator import World, WorldConfig, generate_world

SPLITS = ("train", "dev", "test")


def split_seed(seed: int, split: str) -> int:
    """The seed of one split's world, derived from the run seed (a fixed checksum)."""
    return zlib.crc32(f"{seed}/{split}".encode())


def build_splits(
    seed: int = 0,
    n_train: int = 10_000,
    n_dev: int = 500,
    n_test: int = 1_000,
    **overrides: object,
) -> dict[str, World]:
    """One world per split with a non-zero question count, sized by :meth:`WorldConfig.sized_for`.

    ``overrides`` are WorldConfig fields applied to every split (e.g. ``near_name_rate=0.3`` or
    ``n_people=500``); ``seed``, ``name`` and ``partition`` are set per split.
    """
    reserved = {"seed", "name", "partition", "n_questions"} & set(overrides)
    if reserved:
        raise ValueError(
            f"build_splits sets {sorted(reserved)} per split; pass seed and n_train/n_dev/n_test "
            "instead"
        )
    counts = {"train": n_train, "dev": n_dev, "test": n_test}
    for split, count in counts.items():
        if count < 0:
            raise ValueError(f"n_{split} must be >= 0, got {count}")
    worlds = {}
    for split, count in counts.items():
        if count == 0:
            continue
        cfg = WorldConfig.sized_for(
            count, seed=split_seed(seed, split), name=split, partition=split, **overrides
        )
        worlds[split] = generate_world(cfg)
    return worlds
