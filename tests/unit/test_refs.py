"""Names and references: the grammar that keeps user strings out of paths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelport.errors import InvalidName, InvalidReference
from modelport.refs import ModelRef, check_name, parse_ref


@pytest.mark.parametrize("good", ["a", "mnist", "mnist-mlp_v2.0", "0abc", "a" * 63])
def test_valid_names(good: str) -> None:
    assert check_name(good) == good


@pytest.mark.parametrize("bad", ["", "A", "../x", "a/b", "a" * 64, "-a", ".a", "a..b", "a b", "é", "a\x00"])
def test_invalid_names(bad: str) -> None:
    with pytest.raises(InvalidName):
        check_name(bad)


def test_parse_refs() -> None:
    assert parse_ref("m") == ModelRef("m")
    assert parse_ref("m:3") == ModelRef("m", version=3)
    assert parse_ref("m@staging") == ModelRef("m", alias="staging")
    assert str(parse_ref("m:12")) == "m:12"


@pytest.mark.parametrize("bad", ["m:0", "m:-1", "m:x", "m:01", "m:3@a", "m@", "m@A", "m:99999999999", ":3"])
def test_invalid_refs(bad: str) -> None:
    with pytest.raises((InvalidName, InvalidReference)):
        parse_ref(bad)


@given(st.text(max_size=80))
def test_any_string_parses_or_fails_cleanly(text: str) -> None:
    try:
        ref = parse_ref(text)
    except (InvalidName, InvalidReference):
        return
    assert "/" not in ref.name and ".." not in ref.name and "\\" not in ref.name
