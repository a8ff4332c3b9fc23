"""Go-compatible flag values: durations (``1m30s``), booleans and integers.

kamal-proxy reads its flags with Go's ``time.ParseDuration``, ``strconv.ParseBool`` and
``strconv.ParseInt(s, 0, 64)``, so kproxy accepts exactly the same spellings; a deploy
script written for one works with the other. Durations are returned as float seconds (what
trio's deadlines take) but computed in integer nanoseconds, as Go does, so that
``format_duration(parse_duration(s))`` prints what Go would.
"""

from __future__ import annotations

import json
from typing import Final

# Go's time constants, in nanoseconds.
NANOSECOND: Final = 1
MICROSECOND: Final = 1_000 * NANOSECOND
MILLISECOND: Final = 1_000 * MICROSECOND
SECOND: Final = 1_000 * MILLISECOND
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE

# Go's time.unitMap (src/time/format.go): both micro signs are accepted.
_UNITS: Final[dict[str, int]] = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # MICRO SIGN
    "\u03bcs": MICROSECOND,  # GREEK SMALL LETTER MU
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_DIGITS: Final = frozenset("0123456789")  # str.isdigit() would also accept "²" and "٣"
_MAX_NS: Final = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds
_DURATION_HINT: Final = "use e.g. 5s, 500ms, 1m30s"

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_INT_HINT: Final = "use e.g. 42, -7, 0x2a, 0o52 or 0b101010"
_BASES: Final[dict[str, int]] = {"0x": 16, "0o": 8, "0b": 2}
_BASE_DIGITS: Final[dict[int, frozenset[str]]] = {
    2: frozenset("01_"),
    8: frozenset("01234567_"),
    10: frozenset("0123456789_"),
    16: frozenset("0123456789abcdefABCDEF_"),
}

_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _quote(text: str) -> str:
    """Quote user input for an error message, escaping control characters like Go's %q."""
    return json.dumps(text, ensure_ascii=False)


def _take_digits(text: str, start: int) -> int:
    end = start
    while end < len(text) and text[end] in _DIGITS:
        end += 1
    return end


def _fraction_ns(digits: str, unit: int) -> int:
    """Nanoseconds in ``.digits`` of ``unit``, computed as Go's ParseDuration does.

    Go keeps the digits that fit in an int64 and scales them in float64 arithmetic, so
    "0.3333333333333333333h" is exactly 20m; matching it bit for bit keeps round trips equal.
    """
    value, scale = 0, 1.0
    for char in digits:
        if value > _MAX_NS // 10 or value * 10 + int(char) > _MAX_NS + 1:
            break  # Go stops at the first digit that would overflow and ignores the rest
        value, scale = value * 10 + int(char), scale * 10
    return int(value * (unit / scale))


def parse_duration(text: str) -> float:
    """Parse a Go duration such as ``30s``, ``500ms``, ``1m30s`` or ``-1.5h``.

    Mirrors Go's ``time.ParseDuration``: an optional sign, then one or more
    ``<number><unit>`` groups, where the units are ns, us (µs, μs), ms, s, m and h.
    A bare ``0`` is the only number allowed without a unit.

    Args:
      text: the flag value, exactly as given (no surrounding whitespace).

    Returns:
      The duration in seconds; it can be negative (callers check ranges).

    Raises:
      ValueError: with a message that names the input and shows valid spellings.
    """
    rest = text[1:] if text[:1] in ("-", "+") else text
    if rest == "0":
        return 0.0
    if not rest:
        what = "empty" if not text else "missing number"
        raise ValueError(f"invalid duration {_quote(text)}: {what} ({_DURATION_HINT})")
    total_ns = 0
    pos = 0
    while pos < len(rest):
        group_start = pos
        int_end = _take_digits(rest, pos)
        whole, frac = rest[pos:int_end], ""
        pos = int_end
        if pos < len(rest) and rest[pos] == ".":
            frac_end = _take_digits(rest, pos + 1)
            frac = rest[pos + 1 : frac_end]
            pos = frac_end
        if not whole and not frac:
            raise ValueError(
                f"invalid duration {_quote(text)}: expected a number at "
                f"{_quote(rest[group_start:])} ({_DURATION_HINT})"
            )
        unit_end = pos
        while unit_end < len(rest) and rest[unit_end] not in _DIGITS and rest[unit_end] != ".":
            unit_end += 1
        unit = rest[pos:unit_end]
        pos = unit_end
        if not unit:
            raise ValueError(f"invalid duration {_quote(text)}: missing unit ({_DURATION_HINT})")
        scale = _UNITS.get(unit)
        if scale is None:
            raise ValueError(
                f"invalid duration {_quote(text)}: unknown unit {_quote(unit)} "
                "(use ns, us, ms, s, m or h)"
            )
        whole = whole.lstrip("0")
        if len(whole) > len(str(_MAX_NS)):  # also keeps int() under its 4300-digit limit
            total_ns = _MAX_NS + 2
        else:
            total_ns += int(whole or "0") * scale + _fraction_ns(frac, scale)
        if total_ns > _MAX_NS + 1:
            break  # out of range whatever follows
    negative = text[0] == "-"
    if total_ns > _MAX_NS + negative:  # int64 holds one more negative value
        raise ValueError(
            f"invalid duration {_quote(text)}: out of range (at most {_format_ns(_MAX_NS)})"
        )
    return (-total_ns if negative else total_ns) / SECOND


def _format_fraction(value: int, digits: int) -> str:
    """``.5`` for (5, 1), ``.25`` for (250, 3), ``""`` for a zero fraction, as Go's fmtFrac."""
    text = f"{value:0{digits}d}".rstrip("0")
    return f".{text}" if text else ""


def format_duration(seconds: float) -> str:
    """Format seconds as Go's ``Duration.String()`` does: ``1m30s``, ``500ms``, ``1h0m0s``.

    Used to echo configured values in messages (``within configured timeout (30s)``), so
    they read the same as kamal-proxy's. The value is rounded to whole nanoseconds.
    """
    return _format_ns(round(seconds * SECOND))


def _format_ns(ns: int) -> str:
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < SECOND:
        # Below one second Go uses the largest unit that keeps the integer part non-zero.
        if ns < MICROSECOND:
            return f"{sign}{ns}ns"
        if ns < MILLISECOND:
            unit, scale, digits = "\u00b5s", MICROSECOND, 3
        else:
            unit, scale, digits = "ms", MILLISECOND, 6
        whole, frac = divmod(ns, scale)
        return f"{sign}{whole}{_format_fraction(frac, digits)}{unit}"
    whole_seconds, frac = divmod(ns, SECOND)
    minutes, secs = divmod(whole_seconds, 60)
    text = f"{secs}{_format_fraction(frac, 9)}s"
    if minutes:
        hours, mins = divmod(minutes, 60)
        text = f"{mins}m{text}"
        if hours:
            text = f"{hours}h{text}"
    return sign + text


def parse_bool(text: str) -> bool:
    """Parse a flag boolean exactly as Go's ``strconv.ParseBool`` does.

    Raises:
      ValueError: for anything but 1, t, T, TRUE, true, True and their false spellings.
    """
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"invalid boolean {_quote(text)} (use true or false)")


def parse_int(text: str) -> int:
    """Parse an integer flag as Go's ``strconv.ParseInt(text, 0, 64)`` does.

    Accepts an optional sign, then decimal, ``0x`` hex, ``0o`` or leading-``0`` octal, or
    ``0b`` binary. Underscores may separate digits, as in Go integer literals (``1_000``,
    ``0x_ff``), but not lead, trail or double up.

    Raises:
      ValueError: for bad syntax or a value outside the signed 64-bit range.
    """
    body = text[1:] if text[:1] in ("-", "+") else text
    base, digits = _BASES.get(body[:2].lower(), 0), body
    if base:
        digits = body[2:]
    elif len(body) > 1 and body[0] == "0":
        base, digits = 8, body[1:]
    # A base prefix (or octal's leading 0) counts as a digit, so "0x_ff" and "0_7" are fine.
    prefixed = base != 0
    base = base or 10
    valid = (
        bool(digits.replace("_", ""))
        and set(digits) <= _BASE_DIGITS[base]
        and "__" not in digits
        and not digits.endswith("_")
        and (prefixed or not digits.startswith("_"))
    )
    if not valid:
        raise ValueError(f"invalid integer {_quote(text)} ({_INT_HINT})")
    value = int(digits.replace("_", ""), base)
    if text[0] == "-":
        value = -value
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(
            f"invalid integer {_quote(text)}: out of range "
            f"(must be between {_INT64_MIN} and {_INT64_MAX})"
        )
    return value
