"""``Rate``: a run's smoothed rate of items per second, sampled by its snapshots."""

from __future__ import annotations

import time

__all__ = ["RATE_SMOOTHING", "RATE_WINDOW", "Rate"]

#: Weight of the newest sample in the smoothed rate, as tqdm's default smoothing.
RATE_SMOOTHING = 0.3
#: Shortest span of time one rate sample covers, so bursts of writes do not make it jumpy.
RATE_WINDOW = 0.05


class Rate:
    """The smoothed rate (None until it means something) and its last sample point."""

    __slots__ = ("count", "time", "value")

    def __init__(self, count: int) -> None:
        self.value: float | None = None
        self.time = time.monotonic()
        self.count = count

    def update(self, count: int, *, running: bool) -> float | None:
        """Fold the items done since the last sample into the smoothed rate.

        Samples span at least ``RATE_WINDOW`` seconds, and none is taken before
        the first item is done or after the run ended.
        """
        now = time.monotonic()
        elapsed = now - self.time
        done = count - self.count
        if elapsed >= RATE_WINDOW and running and (done or self.value is not None):
            sample = done / elapsed
            if self.value is None:
                self.value = sample
            else:
                self.value = RATE_SMOOTHING * sample + (1 - RATE_SMOOTHING) * self.value
            self.time, self.count = now, count
        return None if self.value is None else round(self.value, 3)
