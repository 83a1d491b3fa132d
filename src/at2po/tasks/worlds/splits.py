"""Train, dev and test sets from disjoint worlds.

:func:`build_world_sets` (the default task): every split is many small worlds drawing names from
the closed shared inventory and facts from their own seeds, plus a novel-name world.
:func:`build_splits`: one world per split, names from disjoint partitions, as described below.

Each split is its own world, generated from its own seed and drawing names from its own partition
(:mod:`at2po.tasks.worlds.names`): no entity name, first name, surname, city or title word of the
test world occurs in the train or dev world, so a policy cannot pass the test by remembering
training facts. It has to search.
"""

from __future__ import annotations

import zlib

from at2po.tasks.worlds.generator import World, WorldConfig, generate_world
from at2po.tasks.worlds.names import SHARED

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


def world_set_seed(seed: int, split: str, index: int) -> int:
    """The seed of world ``index`` of a split made of many shared-name worlds."""
    return split_seed(seed, f"{split}/{index}")


def build_world_sets(
    seed: int = 0,
    counts: dict[str, int] | None = None,
    questions_per_world: int = 100,
    n_novel: int = 0,
    **overrides: object,
) -> dict[str, tuple[World, ...]]:
    """Splits made of many small shared-name worlds, plus an optional novel-name world.

    ``counts`` maps each split (``train``, ``dev``, ``test``) to its number of questions; a split
    is ``ceil(count / questions_per_world)`` worlds named ``<split>000``, ``<split>001``, … that
    draw their names from the closed inventory (``partition="shared"``) and everything else from
    their own seed (:func:`world_set_seed`), so no two worlds share a fact by design and a
    held-out world's facts cannot be remembered from a training world. Every question's
    ``metadata["corpus"]`` names its world: give each world its own retriever.

    ``n_novel`` > 0 adds the split ``novel``: one world whose names are fresh words of the
    ``test`` partition (never in the inventory, split into pieces by the tokenizer), the harder
    generalisation. ``overrides`` are WorldConfig fields applied to every world.
    """
    reserved = {"seed", "name", "partition", "n_questions"} & set(overrides)
    if reserved:
        raise ValueError(f"build_world_sets sets {sorted(reserved)} per world")
    if questions_per_world < 1:
        raise ValueError(f"questions_per_world must be >= 1, got {questions_per_world}")
    sets: dict[str, tuple[World, ...]] = {}
    for split, count in (counts or {"train": 2000, "dev": 200, "test": 200}).items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use {SPLITS}")
        if count < 0:
            raise ValueError(f"n_{split} must be >= 0, got {count}")
        sizes = [questions_per_world] * (count // questions_per_world)
        sizes += [count % questions_per_world] if count % questions_per_world else []
        sets[split] = tuple(
            generate_world(
                WorldConfig(
                    seed=world_set_seed(seed, split, index),
                    name=f"{split}{index:03d}",
                    partition=SHARED,
                    n_questions=size,
                    **overrides,  # type: ignore[arg-type]
                )
            )
            for index, size in enumerate(sizes)
        )
    if n_novel > 0:
        novel = WorldConfig.sized_for(
            n_novel, seed=split_seed(seed, "novel"), name="novel", partition="test", **overrides
        )
        sets["novel"] = (generate_world(novel),)
    return {split: worlds for split, worlds in sets.items() if worlds}
