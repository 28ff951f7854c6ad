"""RFC 8785 canonical JSON: test vectors and the rules this ledger relies on."""

import struct

import pytest

from citymesh.errors import InvalidInput
from citymesh.ledger.canonical import canonical_json, format_number

# IEEE 754 bit patterns and their ECMAScript forms, from RFC 8785 appendix B; the
# entry 4415af1d78b58c3f is the shortest round-trip form that Python's repr gives.
NUMBER_VECTORS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("41b3de4355555555", "333333333.3333333"),
    ("4415af1d78b58c3f", "99999999999999980000"),
    ("4415af1d78b58c40", "100000000000000000000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
]


@pytest.mark.parametrize(("bits", "expected"), NUMBER_VECTORS)
def test_format_number_rfc8785_vectors(bits, expected):
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert format_number(value) == expected


def test_canonical_json_rfc8785_sample():
    # The sample object of the JCS reference implementation (json-canonicalization).
    value = {
        "numbers": [1e30, 4.50, 6, 2e-3, 0.000000000000000000000000001],
        "escaping": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "other": [None, True, False],
    }
    expected = (
        '{"escaping":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/",'
        '"numbers":[1e+30,4.5,6,0.002,1e-27],"other":[null,true,false]}'
    )
    assert canonical_json(value) == expected.encode("utf-8")


def test_canonical_json_sorts_keys_by_utf16_units():
    # U+1F600 is the surrogate pair D83D DE00 in UTF-16, so it sorts before U+E000,
    # although its code point is larger.
    value = {"\ue000": 1, "\U0001f600": 2, "a": 3}
    assert canonical_json(value) == '{"a":3,"\U0001f600":2,"\ue000":1}'.encode()


def test_canonical_json_integer_floats_lose_their_fraction():
    assert canonical_json({"a": 3.0, "b": 1e16, "c": 0.00001}) == (
        b'{"a":3,"b":10000000000000000,"c":0.00001}'
    )


def test_canonical_json_writes_unicode_literally():
    assert canonical_json("é\u2028\x7f") == '"é\u2028\x7f"'.encode()


def test_canonical_json_escapes_control_characters():
    assert canonical_json("\x01\x1f\b\t") == b'"\\u0001\\u001f\\b\\t"'


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        2**53,
        -(2**53),
        b"raw",
        {1: "a"},
        {"a": {1, 2}},
        "\ud800",
    ],
)
def test_canonical_json_rejects_unrepresentable(value):
    with pytest.raises(InvalidInput):
        canonical_json(value)


def test_canonical_json_accepts_safe_integer_bounds():
    assert canonical_json([2**53 - 1, -(2**53 - 1)]) == (
        b"[9007199254740991,-9007199254740991]"
    )
