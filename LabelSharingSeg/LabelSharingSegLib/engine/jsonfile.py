"""Reading JSON that anyone may have written (bundle.json, dataset.json) without a traceback.

A hostile file can nest 100,000 levels deep (the parser runs out of recursion) or hold a 5000-digit integer
(Python refuses to convert it, or on 3.10 converts it slowly); both become one clear error of the caller's
kind, naming the file. Integers are limited to 64 bits (no field of ours needs more).
"""

from __future__ import annotations

import json
from typing import Any

from .errors import LabelSharingSegError

_MAX_INT_DIGITS = 20


def bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"integer with {len(text)} digits")
    return int(text)


def parse_json(raw: bytes | str, source: str, error: type[LabelSharingSegError]) -> Any:
    """Parse ``raw``; any problem raises ``error`` with one line naming ``source``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_int=bounded_int)
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise error(f"{source}: not valid JSON (RecursionError: nested too deeply to read)") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise error(f"{source}: not valid JSON ({exc})") from None
