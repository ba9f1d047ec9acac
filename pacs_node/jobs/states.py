"""Which job state may follow which: one table, checked before every write.

::

    pending ──► queued ──► enhancing ──► enhanced ──► sending ──► sent
       ▲          │  ▲         │  │          ▲  ▲        │  │
       │          │  └─────────┘  │          │  └────────┘  │  (lease expired, or a retry)
       │          ▼               ▼          │              ▼
       └────────────────────── failed ───────┘ (force-send, resend)

``failed`` is terminal for the pipeline; an admin moves a job on (``jobs retry`` back to
``pending``, ``jobs force-send`` and ``jobs resend`` to ``enhanced``), and ``sent`` goes
back to ``enhanced`` for a resend. The audit DB holds the state; the broker only carries the
job id, so each transition is a compare-and-set on the row (see
:class:`pacs_node.audit.job_store.JobStore`).
"""

from __future__ import annotations

from pacs_node.audit.models import JobState

__all__ = ["TERMINAL", "TRANSITIONS", "TransitionError", "check_transition"]

S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.PENDING: frozenset({S.QUEUED, S.FAILED}),
    # queued -> queued: the reconciler re-publishes a message the broker may have lost.
    S.QUEUED: frozenset({S.QUEUED, S.ENHANCING, S.FAILED}),
    # enhancing -> queued: the worker died and its lease expired.
    S.ENHANCING: frozenset({S.ENHANCED, S.QUEUED, S.FAILED}),
    S.ENHANCED: frozenset({S.SENDING, S.FAILED}),
    # sending -> enhanced: a delivery to retry later, or a sender whose lease expired.
    S.SENDING: frozenset({S.SENT, S.ENHANCED, S.FAILED}),
    S.SENT: frozenset({S.ENHANCED}),
    S.FAILED: frozenset({S.PENDING, S.ENHANCED}),
    S.IGNORED: frozenset({S.PENDING}),
}
#: States in which a job waits for nobody (an admin may still move it on).
TERMINAL = frozenset({S.SENT, S.FAILED, S.IGNORED})


class TransitionError(ValueError):
    """A transition the table does not allow."""


def check_transition(from_state: JobState, to_state: JobState) -> None:
    """Raise :class:`TransitionError` unless ``from_state`` may become ``to_state``."""
    if to_state not in TRANSITIONS.get(from_state, frozenset()):
        raise TransitionError(f"a job cannot go from {from_state.value!r} to {to_state.value!r}")
