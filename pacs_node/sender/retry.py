"""When to try a failed delivery again, and when to stop: a pure function of time.

Exponential back-off with jitter (AWS's "decorrelated" advice in its simplest form: each
delay is the capped exponential times a random factor in ``[1 - jitter, 1]``), so that many
jobs that failed together against one PACS do not come back together. After
``give_up_after_s`` from the first failure the job fails for good, with the last reason.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off for deliveries to PACS.

    Parameters
    ----------
    initial_delay_s : float
        Delay after the first failure, > 0.
    max_delay_s : float
        Cap on any delay, >= ``initial_delay_s``.
    multiplier : float
        Growth per failure, >= 1.
    jitter : float
        Fraction in [0, 1) by which a delay may be shortened at random.
    give_up_after_s : float
        How long after the first failure to keep trying, >= 0 (hours, in practice).
    """

    initial_delay_s: float = 10.0
    max_delay_s: float = 900.0
    multiplier: float = 2.0
    jitter: float = 0.25
    give_up_after_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_delay_s <= self.max_delay_s:
            raise ValueError(
                f"delays {self.initial_delay_s!r} .. {self.max_delay_s!r} s must satisfy "
                "0 < initial <= max"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier {self.multiplier!r} is below 1")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter {self.jitter!r} is not in [0, 1)")
        if self.give_up_after_s < 0:
            raise ValueError(f"give_up_after_s {self.give_up_after_s!r} is negative")

    def delay_after(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1 for the first)."""
        if failures < 1:
            raise ValueError(f"failures {failures!r} must be at least 1")
        # Cap the exponent before it overflows a float for very long outages.
        steps = min(failures - 1, 64)
        base = min(self.max_delay_s, self.initial_delay_s * self.multiplier**steps)
        return base * (1.0 - self.jitter * rng.random())

    def next_attempt_at(
        self, *, first_failure_at: float, now: float, failures: int, rng: random.Random
    ) -> float | None:
        """Time (same clock as the arguments) of the next attempt, or None to give up."""
        deadline = first_failure_at + self.give_up_after_s
        if now >= deadline:
            return None
        return min(now + self.delay_after(failures, rng), deadline)
