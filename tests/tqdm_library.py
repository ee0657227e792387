"""Stands in for third-party code that makes its own tqdm bars and cannot be edited.

It imports tqdm the usual ways, at import time, before any test captures anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm


def crunch(items: Iterable[int]) -> int:
    """Iterate a bar over ``items``; print nothing (a null file)."""
    total = 0
    with open(os.devnull, "w") as devnull:
        for item in tqdm(items, desc="Crunching", file=devnull, mininterval=0, miniters=1):
            total += item
    return total


def download(size: int, chunk: int) -> int:
    """A manual byte bar, as a download helper would make."""
    done = 0
    with open(os.devnull, "w") as devnull:
        with tqdm(
            total=size, desc="Downloading", unit="B", unit_scale=True, file=devnull, mininterval=0
        ) as bar:
            while done < size:
                step = min(chunk, size - done)
                done += step
                bar.update(step)
    return done


def chatty(n: int) -> None:
    """A bar that reports with a postfix and tqdm.write() lines."""
    with open(os.devnull, "w") as devnull:
        bar = auto_tqdm(range(n), desc="Chatting", file=devnull, mininterval=0, miniters=1)
        for i in bar:
            bar.set_postfix_str(f"item={i}")
            tqdm.write(f"wrote {i}", file=devnull)


def quiet(n: int) -> int:
    """A disabled bar."""
    return sum(1 for _ in tqdm(range(n), disable=True))
