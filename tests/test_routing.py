"""Routing rules: typed matchers, first match wins, misses explained."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pacs_node.routing.rules import RoutingRule, RuleAction, RuleMatch, SeriesFacts, route

NM = "1.2.840.10008.5.1.4.1.1.20"
WHOLE_BODY = SeriesFacts(
    modality="NM",
    image_type=("ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"),
    calling_ae="GAMMA_CAM",
    series_description="WB Bone 40cm/min",
    sop_class_uid=NM,
)


def rule(name: str, action: RuleAction = RuleAction.ENHANCE, **match: object) -> RoutingRule:
    return RoutingRule(name=name, action=action, match=RuleMatch.model_validate(match))


def test_every_matcher_must_match() -> None:
    r = rule(
        "wb",
        modality=["nm"],
        image_type_contains=["whole body"],
        calling_ae=["GAMMA_CAM"],
        series_description_regex=r"40\s*cm",
        sop_class=[NM],
    )
    decision = route((r,), WHOLE_BODY)
    assert decision.rule is r
    assert decision.enhance


@pytest.mark.parametrize(
    ("match", "why"),
    [
        ({"modality": ["CT"]}, "modality 'NM' not in ['CT']"),
        ({"image_type_contains": ["STATIC"]}, "lacks ['STATIC']"),
        ({"calling_ae": ["OTHER_CAM"]}, "calling AE 'GAMMA_CAM' not in"),
        ({"series_description_regex": "SPECT"}, "does not match /SPECT/"),
        ({"sop_class": ["1.2.840.10008.5.1.4.1.1.7"]}, f"SOP class {NM} not in"),
    ],
)
def test_a_miss_is_explained(match: dict[str, object], why: str) -> None:
    decision = route((rule("r", **match),), WHOLE_BODY)
    assert decision.rule is None
    assert not decision.enhance
    assert why in decision.reason


def test_first_matching_rule_wins_and_ignore_rules_do_not_enhance() -> None:
    skip = rule("skip-cam", RuleAction.IGNORE, calling_ae=["GAMMA_CAM"])
    enhance = rule("all-nm", modality=["NM"])
    decision = route((skip, enhance), WHOLE_BODY)
    assert decision.rule is skip
    assert not decision.enhance
    assert "ignore" in decision.reason
    assert route((enhance, skip), WHOLE_BODY).enhance


def test_no_rules_means_ignored_with_a_reason() -> None:
    decision = route((), WHOLE_BODY)
    assert decision.rule is None
    assert decision.reason == "no routing rules are configured"


def test_empty_matcher_matches_anything() -> None:
    assert route((rule("any"),), SeriesFacts()).enhance


def test_bad_regex_is_refused_when_the_rule_is_built() -> None:
    with pytest.raises(ValidationError, match="does not compile"):
        rule("bad", series_description_regex="([")
