"""Weighted canaries in the registry contract: local and remote, SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from loramux.registry import Conflict, InvalidName, InvalidRequest, NotFound
from loramux.registry.canary import parse_spec

pytestmark = pytest.mark.timeout(180)


def _canary_rows(reg, name: str) -> list:
    return [e for e in reg.log(name=name, alias="prod") if e.action == "canary"]


def test_canary_set_split_rollback_and_plain_move(backend, adapters, make_adapter) -> None:
    reg = backend.registry
    v1 = reg.push(adapters["a"], "chat")
    v2 = reg.push(adapters["b"], "chat")
    v3 = reg.push(make_adapter(seed=3), "chat")

    state = reg.canary_set("chat", "prod", 1, 2, 0.1)
    assert (state.stable, state.canary, state.weight) == (1, 2, pytest.approx(0.1))
    assert (state.stable_digest, state.canary_digest) == (v1.digest, v2.digest)
    assert state.active and reg.canary("chat", "prod") == state
    assert reg.resolve("chat:prod") == v1  # the stable version: what `show` and pins see
    split = reg.resolve_split("chat:prod")
    assert (split.stable, split.canary, split.weight) == (v1, v2, pytest.approx(0.1))
    assert reg.resolve_split("chat@3").canary is None and reg.resolve_split("chat").stable == v3

    [row] = _canary_rows(reg, "chat")
    assert row.detail == {"alias": "prod", "stable": 1, "canary": 2, "weight": 0.1,
                          "reason": None}
    assert [e.action for e in reg.log(name="chat", alias="prod")] == ["canary", "alias_set"]

    rolled = reg.canary_set("chat", "prod", 1, 2, 0.0, reason="error rate +30%")
    assert (rolled.canary, rolled.weight, rolled.active) == (2, 0.0, False)
    assert reg.resolve_split("chat:prod").canary is None  # weight 0: nothing to split
    assert _canary_rows(reg, "chat")[0].detail["reason"] == "error rate +30%"

    reg.canary_set("chat", "prod", 1, 3, 0.5)
    reg.alias_set("chat", "prod", 3)  # a plain move (no canary given) ends the canary
    after = reg.canary("chat", "prod")
    assert (after.stable, after.canary, after.weight) == (3, None, 0.0)
    assert reg.resolve_split("chat:prod").model_dump() == {"stable": v3.model_dump(),
                                                            "canary": None, "weight": 0.0}
    ended = _canary_rows(reg, "chat")[0]
    assert ended.detail["canary"] is None and ended.detail["stable"] == 3
    assert "without a canary" in ended.detail["reason"]
    reg.alias_set("chat", "prod", 3)  # nothing to end: no further canary row
    assert len(_canary_rows(reg, "chat")) == 4


def test_canary_refusals(backend, adapters) -> None:
    reg = backend.registry
    reg.push(adapters["a"], "chat")
    reg.push(adapters["b"], "chat")
    with pytest.raises(NotFound):
        reg.canary("chat", "prod")  # no such alias
    with pytest.raises(NotFound):
        reg.canary_set("chat", "prod", 1, 9, 0.1)  # no version 9
    with pytest.raises(InvalidRequest):
        reg.canary_set("chat", "prod", 1, 1, 0.1)  # the canary is the stable version
    with pytest.raises((InvalidRequest, InvalidName)):
        reg.canary_set("chat", "prod", 1, 2, 1.5)
    with pytest.raises(InvalidRequest):
        reg.canary_set("chat", "prod", 1, None, 0.2)
    with pytest.raises(InvalidName):
        reg.canary_set("chat", "latest", 1, 2, 0.1)
    assert not [e for e in reg.log(name="chat") if e.action == "canary"]  # nothing half-done


def test_a_canary_version_is_deleted_only_by_force_which_ends_the_canary(backend,
                                                                         adapters) -> None:
    reg = backend.registry
    v1 = reg.push(adapters["a"], "chat")
    reg.push(adapters["b"], "chat")
    reg.canary_set("chat", "prod", 1, 2, 0.3)
    with pytest.raises(Conflict, match="chat@2 is the canary of chat:prod: end the canary"):
        reg.delete("chat@2")
    assert reg.resolve_split("chat:prod").weight == pytest.approx(0.3)
    reg.delete("chat@2", force=True)  # ends the canary, with its own audit row
    split = reg.resolve_split("chat:prod")
    assert (split.stable, split.canary, split.weight) == (v1, None, 0.0)
    state = reg.canary("chat", "prod")
    assert state.canary is None and state.weight == 0
    ended = _canary_rows(reg, "chat")[0]
    assert ended.detail["reason"] == "chat@2 deleted" and ended.detail["weight"] == 0


@pytest.mark.parametrize(("text", "want"), [("5:10%", (5, 0.1)), ("5:0.1", (5, 0.1)),
                                            ("12:100%", (12, 1.0)), (" 3 : 0 ", (3, 0.0))])
def test_parse_spec(text: str, want: tuple[int, float]) -> None:
    version, weight = parse_spec(text)
    assert (version, pytest.approx(weight)) == want


@pytest.mark.parametrize("text", ["5", "5:", "x:10%", "5:110%", "5:1.5", "5:-1", ":10%"])
def test_parse_spec_refuses(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_spec(text)
