"""Go flag syntax: the cases follow Go's src/time/time_test.go and strconv/atoi_test.go."""

from __future__ import annotations

import pytest

from kproxy.core.flag_values import format_duration, parse_bool, parse_duration, parse_int

MAX_DURATION_NS = 2**63 - 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("-0", 0.0),
        ("+0", 0.0),
        ("0s", 0.0),
        ("5s", 5.0),
        ("30s", 30.0),
        ("1478s", 1478.0),
        ("-5s", -5.0),
        ("+5s", 5.0),
        ("-0s", 0.0),
        ("5.0s", 5.0),
        ("5.6s", 5.6),
        ("5.s", 5.0),
        (".5s", 0.5),
        ("1.0s", 1.0),
        ("1.00s", 1.0),
        ("1.004s", 1.004),
        ("1.0040s", 1.004),
        ("100.00100s", 100.001),
        ("0" * 5000 + "1s", 1.0),
        ("10ns", 10e-9),
        ("11us", 11e-6),
        ("12\u00b5s", 12e-6),  # MICRO SIGN
        ("12\u03bcs", 12e-6),  # GREEK SMALL LETTER MU
        ("13ms", 0.013),
        ("500ms", 0.5),
        ("14s", 14.0),
        ("15m", 900.0),
        ("16h", 57600.0),
        ("3h30m", 12600.0),
        ("2h45m", 9900.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("10.5s4m", 250.5),
        ("-2m3.4s", -123.4),
        ("1h2m3s4ms5us6ns", 3723.004005006),
        ("39h9m14.425s", 140_954.425),
        ("52763797000ns", 52.763797),
        ("0.3333333333333333333h", 1200.0),  # Go's float64 step rounds this up to 20m
        ("1.0000000001s", 1.0),  # below a nanosecond is truncated
        ("1.9999999999s", 1.999999999),
        ("0.100000000000000000000h", 360.0),  # more digits than fit in the fraction
        ("9007199254.740993ms", 9007199.254740993),
        ("2562047h47m16.854775807s", MAX_DURATION_NS / 1e9),
        ("-2562047h47m16.854775808s", -(2**63) / 1e9),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-15, abs=1e-15)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'invalid duration "": empty (use e.g. 5s, 500ms, 1m30s)'),
        ("5", 'invalid duration "5": missing unit (use e.g. 5s, 500ms, 1m30s)'),
        ("30", 'invalid duration "30": missing unit'),
        ("1m30", 'invalid duration "1m30": missing unit'),
        ("1.5.5s", "missing unit"),
        ("-", 'invalid duration "-": missing number'),
        ("+", "missing number"),
        (".", 'invalid duration ".": expected a number at "."'),
        ("-.", "expected a number"),
        (".s", "expected a number"),
        ("+.s", "expected a number"),
        ("s", 'invalid duration "s": expected a number at "s"'),
        ("abc", "expected a number"),
        ("1d", 'invalid duration "1d": unknown unit "d" (use ns, us, ms, s, m or h)'),
        ("3x", 'unknown unit "x"'),
        ("1S", 'unknown unit "S"'),
        ("1sec", 'unknown unit "sec"'),
        ("1m30sec", 'unknown unit "sec"'),
        ("5 s", 'unknown unit " s"'),
        ("5s ", 'unknown unit "s "'),
        (" 5s", "expected a number"),
        ("-+5s", "expected a number"),
        ("5s\n", 'unknown unit "s\\n"'),  # control characters are escaped in messages
        ("\u0663s", "expected a number"),  # ARABIC-INDIC DIGIT THREE is not a digit here
        ("9223372036854775808ns", "out of range (at most 2562047h47m16.854775807s)"),
        ("2562047h47m16.854775808s", "out of range"),
        ("-2562047h47m16.854775809s", "out of range"),
        ("9999999999999999999999h", "out of range"),
        ("1" * 5000 + "ns", "out of range"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid duration ") as info:
        parse_duration(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0, "0s"),
        (1e-9, "1ns"),
        (-1e-9, "-1ns"),
        (999e-9, "999ns"),
        (1e-6, "1\u00b5s"),
        (1.1e-6, "1.1\u00b5s"),
        (2.2e-3, "2.2ms"),
        (0.5, "500ms"),
        (0.0015, "1.5ms"),
        (0.999999999, "999.999999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (3.3, "3.3s"),
        (30, "30s"),
        (59.999999999, "59.999999999s"),
        (60, "1m0s"),
        (90, "1m30s"),
        (4 * 60 + 5.001, "4m5.001s"),
        (3600, "1h0m0s"),
        (5 * 3600 + 6 * 60 + 7.001, "5h6m7.001s"),
        (9900, "2h45m0s"),
        (8 * 3600 + 1e-9, "8h0m0.000000001s"),
        (-90, "-1m30s"),
        (-0.5, "-500ms"),
        (1e-10, "0s"),  # below a nanosecond rounds away, as Duration cannot hold it
        (MAX_DURATION_NS // 10**9, "2562047h47m16s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "text",
    ["0s", "1ns", "1\u00b5s", "500ms", "1.5s", "30s", "1m30s", "1h0m0s", "2h45m0s", "-1m30s"],
)
def test_format_duration_round_trips(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *((text, True) for text in ["1", "t", "T", "TRUE", "true", "True"]),
        *((text, False) for text in ["0", "f", "F", "FALSE", "false", "False"]),
    ],
)
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize(
    "text", ["", "yes", "no", "on", "off", "y", "tRUE", "fAlSe", " true", "true ", "2", "-1"]
)
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r'^invalid boolean ".*" \(use true or false\)$'):
        parse_bool(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("-0", 0),
        ("+0", 0),
        ("1", 1),
        ("-1", -1),
        ("+1", 1),
        ("12345", 12345),
        ("-12345", -12345),
        ("012345", 0o12345),  # a leading 0 means octal, as in Go
        ("-012345", -0o12345),
        ("00", 0),
        ("0x10", 16),
        ("0X1F", 31),
        ("0xabcDEF", 0xABCDEF),
        ("-0x10", -16),
        ("0o17", 15),
        ("0O17", 15),
        ("0b101", 5),
        ("0B11", 3),
        ("-0b1", -1),
        # Underscores as in Go integer literals: between digits, or after a base prefix.
        ("1_000", 1000),
        ("1_000_000", 1_000_000),
        ("0x_ff", 255),
        ("0xf_f", 255),
        ("0b_1_0", 2),
        ("0o_7", 7),
        ("0_7", 7),
        ("-1_0", -10),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
        ("0x7fffffffffffffff", 2**63 - 1),
        ("-0x8000000000000000", -(2**63)),
    ],
)
def test_parse_int(text: str, value: int) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "use e.g. 42"),
        ("-", "use e.g. 42"),
        ("+", "use e.g. 42"),
        ("++1", "use e.g. 42"),
        ("+-1", "use e.g. 42"),
        (" 1", "use e.g. 42"),
        ("1 ", "use e.g. 42"),
        ("1.0", "use e.g. 42"),
        ("1e3", "use e.g. 42"),
        ("12a", "use e.g. 42"),
        ("10MB", "use e.g. 42"),
        ("0x", "use e.g. 42"),
        ("0o", "use e.g. 42"),
        ("0b", "use e.g. 42"),
        ("0xg", "use e.g. 42"),
        ("08", "use e.g. 42"),
        ("0o8", "use e.g. 42"),
        ("0b2", "use e.g. 42"),
        ("_1", "use e.g. 42"),
        ("1_", "use e.g. 42"),
        ("1__0", "use e.g. 42"),
        ("0x_", "use e.g. 42"),
        ("0x__1", "use e.g. 42"),
        ("-_1", "use e.g. 42"),
        ("\u0663", "use e.g. 42"),  # ARABIC-INDIC DIGIT THREE
        ("9223372036854775808", "out of range"),
        ("-9223372036854775809", "out of range"),
        ("0x8000000000000000", "out of range"),
        ("99999999999999999999", "out of range"),
    ],
)
def test_parse_int_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid integer ") as info:
        parse_int(text)
    assert reason in str(info.value)
