"""Value conversions for `type`, `date` and `values`, each compiled once per rule into a plain function.

A conversion raises ConversionError with a reason; the engine adds the rule and the path. JSON ``null``
passes through `type` and `date` unchanged: it already says "no value", and failing on it would make
every nullable field fatal (a `values` entry keyed "null" can still map it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from gateway.transform.pointer import quote

Converter = Callable[[object], object]

TYPES: Final = ("string", "integer", "number", "boolean")
ISO8601: Final = "iso8601"
UNIX: Final = "unix"

# Directives that both strftime and strptime support on every platform (Python docs, "strftime() and
# strptime() Format Codes"); glibc extras such as %-d or %s would parse nowhere or differ by platform.
DATE_DIRECTIVES: Final = frozenset("aAwdbBmyYHIpMSfzZjUWcxXGuV%")

# What orjson (and most JSON peers) can represent exactly; wider integers fail at conversion time
# instead of at serialisation, where nobody could name the rule.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_MAX_NUMBER_CHARS: Final = 400
# str() of an int this long is slow and, past CPython's int_max_str_digits, raises; no JSON peer sends one.
_HUGE: Final = 10**300
_NUMBER_CHARS: Final = frozenset("0123456789+-.eE")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SECOND: Final = timedelta(seconds=1)
# Sample used at load to prove that a parse pattern can read back what it describes.
_SAMPLE: Final = datetime(2024, 1, 31, 13, 45, 30, 123456, tzinfo=UTC)


class ConversionError(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def show(value: object, limit: int = 60) -> str:
    """A value as it would appear in JSON, shortened, for error messages."""
    if isinstance(value, str):
        text = quote(value)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = _number_text(value)
    elif isinstance(value, dict):
        text = "an object"
    elif isinstance(value, list):
        text = "an array"
    else:
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number_text(value: int | float) -> str:
    if isinstance(value, int):
        return str(value) if -_HUGE < value < _HUGE else "a very large integer"
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        # JSON does not tell 12 from 12.0, so neither do string forms and value keys.
        return str(int(value))
    return repr(value)


def value_key(value: object) -> str | None:
    """The string form a `values` table is keyed by; None for values no key can name (arrays, objects)."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number_text(value)
    return None


# --- type -------------------------------------------------------------------------------------------


def _fail(value: object, kind: str) -> ConversionError:
    return ConversionError(f"cannot convert {show(value)} to {kind}")


def to_string(value: object) -> object:
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(value, "string")
        if isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX:
            raise _fail(value, "string")
        return _number_text(value)
    raise _fail(value, "string")


def _int_literal(text: str) -> int | None:
    if text.isdigit() and text.isascii() and len(text) <= _MAX_NUMBER_CHARS:
        return int(text)
    digits = text[1:] if text[:1] in ("-", "+") else text
    # isdigit() alone admits other scripts' digits and str.isdecimal() too; JSON peers mean ASCII.
    if digits and len(digits) <= _MAX_NUMBER_CHARS and digits.isascii() and digits.isdigit():
        return int(text)
    return None


def _checked_int(number: int, original: object) -> int:
    if _INT_MIN <= number <= _INT_MAX:
        return number
    raise ConversionError(f"{show(original)} is out of the 64-bit integer range")


def to_integer(value: object) -> object:
    # Exact-type checks first: they are the common cases and cheaper than the isinstance chain below.
    if type(value) is int:
        return value
    if type(value) is str and value.isdigit() and value.isascii() and len(value) < 19:
        return int(value)
    if value is None:
        return None
    if isinstance(value, bool):
        raise _fail(value, "integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return _checked_int(int(value), value)
        raise ConversionError(f"cannot convert {show(value)} to integer: it is not a whole number")
    if isinstance(value, str):
        number = _int_literal(value)
        if number is not None:
            return _checked_int(number, value)
    raise _fail(value, "integer")


def to_number(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _fail(value, "number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise _fail(value, "number")
    if isinstance(value, str):
        number = _int_literal(value)
        if number is not None:
            return _checked_int(number, value)
        # float() also reads "nan", "inf", "1_000" and padded text, none of which is a JSON number.
        if value and len(value) <= _MAX_NUMBER_CHARS and _NUMBER_CHARS.issuperset(value):
            try:
                result = float(value)
            except ValueError:
                raise _fail(value, "number") from None
            if math.isfinite(result):
                return result
    raise _fail(value, "number")


def to_boolean(value: object) -> object:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if value == 1:
            return True
        if value == 0:
            return False
    elif value == "true":
        return True
    elif value == "false":
        return False
    raise _fail(value, "boolean")


TYPE_CONVERTERS: Final[dict[str, Converter]] = {
    "string": to_string,
    "integer": to_integer,
    "number": to_number,
    "boolean": to_boolean,
}


# --- date -------------------------------------------------------------------------------------------


def date_format_problem(pattern: str, *, parsing: bool) -> str | None:
    """Why ``pattern`` is no usable date format, or None. ``parsing``: it will read values, not write them."""
    if pattern in (ISO8601, UNIX):
        return None
    directives = 0
    pos = pattern.find("%")
    while pos != -1:
        code = pattern[pos + 1 : pos + 2]
        if not code:
            return f"date format {quote(pattern)} ends in a lone %"
        if code not in DATE_DIRECTIVES:
            return f"unknown date format {quote('%' + code)}"
        if code != "%":
            directives += 1
        pos = pattern.find("%", pos + 2)
    if directives == 0:
        return (
            f"date format {quote(pattern)} has no % directives; "
            'expected a strftime pattern such as "%Y-%m-%d", "iso8601" or "unix"'
        )
    if parsing:
        try:
            datetime.strptime(_SAMPLE.strftime(pattern), pattern)
        except ValueError as exc:
            return f"date format {quote(pattern)} cannot be used to read dates: {exc}"
    return None


def _as_utc(moment: datetime) -> datetime:
    # Naive values carry no zone; docs/transforms.md reads them as UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_unix(value: object) -> datetime:
    if isinstance(value, bool):
        raise ConversionError(f"{show(value)} is not a unix timestamp")
    seconds: int | float
    if isinstance(value, int | float):
        seconds = value
    elif isinstance(value, str) and (literal := _int_literal(value)) is not None:
        # Many APIs send epoch seconds as strings; `type` runs after `date`, so it cannot fix that first.
        seconds = literal
    else:
        raise ConversionError(f"{show(value)} is not a unix timestamp")
    try:
        if isinstance(seconds, float) and not math.isfinite(seconds):
            raise ValueError
        return _EPOCH + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        raise ConversionError(f"{show(value)} is out of the supported date range") from None


def _parse_iso(value: object) -> datetime:
    if not isinstance(value, str):
        raise ConversionError(f"{show(value)} is not an ISO 8601 date (expected a string)")
    try:
        return _as_utc(datetime.fromisoformat(value))
    except (ValueError, OverflowError):
        raise ConversionError(f"{show(value)} is not an ISO 8601 date") from None


def _pattern_parser(pattern: str) -> Callable[[object], datetime]:
    def parse(value: object) -> datetime:
        if not isinstance(value, str):
            raise ConversionError(f"{show(value)} does not match date format {quote(pattern)} (not a string)")
        try:
            return _as_utc(datetime.strptime(value, pattern))
        except (ValueError, OverflowError):
            raise ConversionError(f"{show(value)} does not match date format {quote(pattern)}") from None

    return parse


def _format_unix(moment: datetime) -> object:
    # Floor division keeps pre-1970 instants on the right second and avoids float rounding.
    return (moment - _EPOCH) // _ONE_SECOND


def _format_iso(moment: datetime) -> object:
    return moment.replace(tzinfo=None).isoformat() + "Z"


def _pattern_formatter(pattern: str) -> Callable[[datetime], object]:
    def format_(moment: datetime) -> object:
        try:
            return moment.strftime(pattern)
        except (ValueError, OverflowError) as exc:
            raise ConversionError(f"cannot write {moment.isoformat()} as {quote(pattern)}: {exc}") from None

    return format_


def date_converter(source_format: str, target_format: str) -> Converter:
    """Both formats must have passed date_format_problem. Instants are normalised to UTC in between."""
    parse: Callable[[object], datetime]
    if source_format == UNIX:
        parse = _parse_unix
    elif source_format == ISO8601:
        parse = _parse_iso
    else:
        parse = _pattern_parser(source_format)
    format_: Callable[[datetime], object]
    if target_format == UNIX:
        format_ = _format_unix
    elif target_format == ISO8601:
        format_ = _format_iso
    else:
        format_ = _pattern_formatter(target_format)

    def convert(value: object) -> object:
        if value is None:
            return None
        return format_(parse(value))

    return convert


def chain(converters: list[Converter]) -> Converter | None:
    """One function applying ``converters`` left to right; None when there is nothing to do."""
    if not converters:
        return None
    result = converters[0]
    for following in converters[1:]:
        result = _compose(result, following)
    return result


def _compose(first: Converter, second: Converter) -> Converter:
    return lambda value: second(first(value))


# --- TOML -> JSON -----------------------------------------------------------------------------------


def toml_to_json(value: object, where: str, problems: list[str]) -> object:
    """A TOML value as JSON: dates and times become ISO 8601 strings; nan and inf are problems."""
    if isinstance(value, datetime):
        if value.tzinfo is not None and value.utcoffset() == timedelta(0):
            return value.replace(tzinfo=None).isoformat() + "Z"
        return value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{where}: {value!r} has no JSON form")
        return None
    if isinstance(value, dict):
        return {k: toml_to_json(v, f"{where}.{key_text(k)}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [toml_to_json(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    return value


def key_text(key: object) -> str:
    """A table key as it appears in a problem's key path: bare when TOML would allow it bare."""
    if not isinstance(key, str):
        # Only hand-built dicts (parse_spec's callers) can have these; TOML keys are always strings.
        return quote(str(key))
    if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
        return key
    return quote(key)
