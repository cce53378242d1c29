"""Schedules of the continual stages, as pure functions of the epoch."""

from __future__ import annotations

import math


def replay_weight(epoch: int, initial: float, temperature: float) -> float:
    """Weight of the replay loss at `epoch` (0-based): initial * exp(-epoch / temperature).

    Replay matters most early, while the model is closest to the previous block's state, and
    fades as the new block is learned. CCD uses temperature 10 for the student and (by reusing
    another flag, bug B12) 5 for the teacher; here each stage sets its own, explicitly.
    """
    if temperature <= 0:
        raise ValueError("replay temperature must be positive")
    return initial * math.exp(-epoch / temperature)
