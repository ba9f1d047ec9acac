"""Typed routing rules and the pure function that picks the rule for a series.

A rule matches when every matcher it sets matches (AND); an unset matcher matches anything.
Rules are tried in file order; the first match wins. No ``eval``: matchers are data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RuleAction(StrEnum):
    """What a matching rule does with the series."""

    ENHANCE = "enhance"  #: make a job for the enhancement pipeline
    IGNORE = "ignore"  #: record the series as ignored, on purpose


class SeriesFacts(BaseModel):
    """What routing may look at, taken from a series' first instance and its sender."""

    model_config = ConfigDict(frozen=True)

    modality: str = ""
    image_type: tuple[str, ...] = ()
    calling_ae: str = ""
    series_description: str = ""
    sop_class_uid: str = ""


class RuleMatch(BaseModel):
    """Matchers of one rule. Strings compare case-insensitively, ignoring padding."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    modality: tuple[str, ...] = ()
    #: Every listed value must be present in Image Type (e.g. ``["WHOLE BODY"]``).
    image_type_contains: tuple[str, ...] = ()
    calling_ae: tuple[str, ...] = ()
    #: Python regular expression searched in Series Description.
    series_description_regex: str | None = None
    sop_class: tuple[str, ...] = ()

    @field_validator("series_description_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regular expression {value!r} does not compile: {exc}") from None
        return value


class RoutingRule(BaseModel):
    """A named rule: matchers plus the action to take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    action: RuleAction = RuleAction.ENHANCE
    match: RuleMatch = RuleMatch()


@dataclass(frozen=True)
class RoutingDecision:
    """Outcome of routing one series: the rule that matched, or why none did."""

    rule: RoutingRule | None
    reason: str

    @property
    def enhance(self) -> bool:
        return self.rule is not None and self.rule.action is RuleAction.ENHANCE


def _norm(value: str) -> str:
    return value.strip().upper()


def _mismatch(match: RuleMatch, facts: SeriesFacts) -> str | None:
    """Return why ``facts`` fail ``match``, or None when they match."""
    if match.modality and _norm(facts.modality) not in {_norm(m) for m in match.modality}:
        return f"modality {facts.modality!r} not in {list(match.modality)}"
    if match.image_type_contains:
        present = {_norm(v) for v in facts.image_type}
        missing = [v for v in match.image_type_contains if _norm(v) not in present]
        if missing:
            return f"image type {list(facts.image_type)} lacks {missing}"
    if match.calling_ae and _norm(facts.calling_ae) not in {_norm(a) for a in match.calling_ae}:
        return f"calling AE {facts.calling_ae!r} not in {list(match.calling_ae)}"
    if match.series_description_regex is not None and not re.search(
        match.series_description_regex, facts.series_description
    ):
        return f"series description does not match /{match.series_description_regex}/"
    if match.sop_class and facts.sop_class_uid.strip() not in match.sop_class:
        return f"SOP class {facts.sop_class_uid} not in {list(match.sop_class)}"
    return None


def route(rules: tuple[RoutingRule, ...], facts: SeriesFacts) -> RoutingDecision:
    """Pick the first rule matching ``facts``; explain each miss when none does."""
    misses: list[str] = []
    for rule in rules:
        why_not = _mismatch(rule.match, facts)
        if why_not is None:
            verb = "enhance" if rule.action is RuleAction.ENHANCE else "ignore"
            return RoutingDecision(rule, f"matched rule {rule.name!r} ({verb})")
        misses.append(f"{rule.name}: {why_not}")
    if not rules:
        return RoutingDecision(None, "no routing rules are configured")
    return RoutingDecision(None, "no routing rule matched (" + "; ".join(misses) + ")")
