"""Series completion: quiet, released series are routed and become jobs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from pacs_node.audit.models import JobState
from pacs_node.audit.store import AuditStore, CompleteSeries
from pacs_node.routing.rules import RoutingDecision, RoutingRule, SeriesFacts, route

logger = logging.getLogger(__name__)

ACTOR = "completion"


def facts_of(series: CompleteSeries) -> SeriesFacts:
    return SeriesFacts(
        modality=series.modality or "",
        image_type=tuple((series.image_type or "").split("\\")) if series.image_type else (),
        calling_ae=series.calling_ae,
        series_description=series.series_description or "",
        sop_class_uid=series.sop_class_uid,
    )


@dataclass(frozen=True)
class Routed:
    series_instance_uid: str
    job_id: int
    decision: RoutingDecision


def complete_and_route(
    audit: AuditStore, rules: tuple[RoutingRule, ...], *, quiet_period_s: float, now: datetime
) -> list[Routed]:
    """Turn every complete, unrouted series into a job (``pending`` or ``ignored``)."""
    routed = []
    for series in audit.complete_series(now - timedelta(seconds=quiet_period_s)):
        decision = route(rules, facts_of(series))
        state = JobState.PENDING if decision.enhance else JobState.IGNORED
        job_id = audit.create_job(
            series.series_id,
            state,
            rule_name=decision.rule.name if decision.rule else None,
            reason=decision.reason,
            actor=ACTOR,
        )
        if job_id is not None:
            logger.info("series complete: job %d %s (%s)", job_id, state, decision.reason)
            routed.append(Routed(series.series_instance_uid, job_id, decision))
    return routed
