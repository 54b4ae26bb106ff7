"""`keys.key_normalizer` (a column's lookup key, specialised once) equals `keys.lookup_key`
for every indexable meaning, whatever a policy passes as the value."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from komm_policy.directory.columns import INDEXABLE, Column
from komm_policy.directory.keys import key_normalizer, lookup_key

HEX = "0123456789abcdefABCDEF"
_identity_like = st.one_of(
    st.text(HEX, min_size=0, max_size=66),
    st.text(HEX, min_size=64, max_size=64),
    st.text(HEX, min_size=64, max_size=64).map(lambda t: f" {t} "),
    st.text(HEX, min_size=1, max_size=62).map(lambda t: "0x" + t),
    st.text(HEX + "gx \u0663", min_size=64, max_size=64),  # \u0663: a non-ASCII digit
    st.integers(-5, 2**260),
    st.dictionaries(st.just("__identity__"), st.text(HEX, min_size=64, max_size=64),
                    min_size=1, max_size=1),
)
_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=70), _identity_like,
                    st.sampled_from(["a@x.example", " A@B.example ", "Active", "1", "-3"]))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(INDEXABLE - {"network"})), st.booleans(), _values)
def test_key_normalizer_equals_lookup_key(meaning: str, optional: bool, value: Any) -> None:
    column = Column("c", meaning, optional, ("Active", "Suspended") if meaning == "enum"
                    else ())
    if value is None:  # callers pass a none key on before normalising (it matches nothing)
        assert lookup_key(column, value) is None
        return
    assert key_normalizer(column)(value) == lookup_key(column, value)


def test_an_identity_in_normal_form_is_its_own_key() -> None:
    column = Column("identity", "identity")
    normal = "0" * 60 + "beef"
    assert key_normalizer(column)(normal) is normal
    assert key_normalizer(column)(" 0xBEEF ") == normal
    assert key_normalizer(column)("0" * 60 + "BEEF") == normal
    assert key_normalizer(column)("not hex") is None
