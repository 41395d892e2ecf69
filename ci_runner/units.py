"""Durations and sizes as the config file writes them (`1h30m`, `D-HH:MM:SS`, `256MiB`) and as
messages and Slurm show them. Pure."""

from __future__ import annotations

import re

from ci_runner.config_values import describe
from ci_runner.errors import ConfigError


class InvalidDuration(ConfigError, ValueError):
    """A duration string that `parse_duration` cannot read (also a `ValueError`)."""


# --------------------------------------------------------------------------------------------- durations

_UNIT_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CLOCK_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")

DURATION_HELP = "expected a duration like 90s, 30m, 1h30m, 2h, HH:MM:SS, MM:SS, D-HH:MM:SS or integer seconds"


def parse_duration(text: str | int) -> float:
    """Seconds in `text`: `90s`, `30m`, `1h30m`, `2h`, `1d`, `HH:MM:SS`, `MM:SS`, `D-HH:MM:SS`, or integer seconds.

    Raises `InvalidDuration` (a `ConfigError` and a `ValueError`) with a message for the user.
    Minutes and seconds after a colon must be below 60; the leading field is unbounded.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidDuration(f"{DURATION_HELP}, got {describe(text)}")
    if isinstance(text, int):
        if text < 0:
            raise InvalidDuration(f"{DURATION_HELP}, got a negative number")
        return float(text)
    raw = text.strip().lower()
    if raw.isdigit():
        return float(raw)
    unit = _UNIT_DURATION.match(raw)
    if raw and unit and any(unit.groups()):
        days, hours, minutes, seconds = (int(g or 0) for g in unit.groups())
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    clock = _CLOCK_DURATION.match(raw)
    if clock and (clock.group(3) is not None or clock.group(1) is not None):
        days = int(clock.group(1) or 0)
        fields = [int(g) for g in clock.groups()[1:] if g is not None]
        if clock.group(1) is not None:  # D-HH[:MM[:SS]]: every field after the days is bounded
            bounded = zip(fields, (24, 60, 60))
        else:  # [HH:]MM:SS: the leading field is unbounded
            bounded = zip(fields[1:], (60, 60))
        if any(value >= limit for value, limit in bounded):
            raise InvalidDuration(f"{DURATION_HELP}, got {text!r} (a field after the first is out of range)")
        if clock.group(1) is not None:  # Slurm's D-HH[:MM[:SS]]
            fields += [0] * (3 - len(fields))
        elif len(fields) == 2:  # MM:SS
            fields.insert(0, 0)
        hours, minutes, seconds = fields
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    raise InvalidDuration(f"{DURATION_HELP}, got {text!r}")


def slurm_time(seconds: float) -> str:
    """Slurm's time-limit notation for `seconds` (rounded up to whole seconds): `HH:MM:SS` or `D-HH:MM:SS`."""
    total = int(-(-seconds // 1))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


# -------------------------------------------------------------------------------------------- sizes

_SIZE = re.compile(r"^(\d+)\s*(?:(b)|([kmgt])(i)?b)?$", re.IGNORECASE)
_SIZE_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}
SIZE_HELP = "expected a size like 64MiB, 512KiB, 1GiB, 100MB or an integer number of bytes"


class InvalidSize(ConfigError, ValueError):
    """A size string that `parse_size` cannot read (also a `ValueError`)."""


def parse_size(text: str | int) -> int:
    """Bytes in `text`: an integer byte count, `123B`, or a number with a binary (`KiB`, `MiB`, `GiB`, `TiB`:
    powers of 1024) or decimal (`KB`, `MB`, `GB`, `TB`: powers of 1000) unit; units are case-insensitive.

    Raises `InvalidSize` (a `ConfigError` and a `ValueError`) with a message for the user.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidSize(f"{SIZE_HELP}, got {describe(text)}")
    if isinstance(text, int):
        if text < 0:
            raise InvalidSize(f"{SIZE_HELP}, got a negative number")
        return text
    match = _SIZE.match(text.strip())
    if not match:
        raise InvalidSize(f"{SIZE_HELP}, got {text!r}")
    number, _, prefix, binary = match.groups()
    if prefix is None:
        return int(number)
    return int(number) * (1024 if binary else 1000) ** _SIZE_POWERS[prefix.lower()]


def format_size(size: int) -> str:
    """`size` bytes for a message: the largest binary unit that divides it (`64 MiB`), else bytes."""
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if size and size % 1024**power == 0:
            return f"{size // 1024**power} {unit}"
    return f"{size} bytes"

