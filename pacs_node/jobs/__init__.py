"""Job life: the allowed state transitions (pure) and the leases that make claims safe."""

from pacs_node.jobs.states import TRANSITIONS, TransitionError, check_transition

__all__ = ["TRANSITIONS", "TransitionError", "check_transition"]
