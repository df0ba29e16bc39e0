"""How the registry names things: base references, adapter id prefixes, and the names it accepts.

Shared by the write side (store) and the read side (views), neither of which imports the other.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Sequence

from loragen.errors import LoragenError, NotFound, quoted

# The name rule lives once, in loragen.inputs (task folders and YAML names are checked by it too).
from loragen.inputs import MAX_NAME_LENGTH, NAME_PATTERN, check_name  # noqa: F401  (part of this module's API)

MIN_ID_PREFIX = 4
HEX = "0123456789abcdef"


def parse_base_ref(ref: str) -> tuple[str, int | None]:
    """'smollm2@v2' -> ('smollm2', 2); 'smollm2' -> ('smollm2', None) meaning the newest."""
    name, sep, version = ref.partition("@")
    if not sep:
        return name, None
    match = re.fullmatch(r"v?(\d{1,9})", version)  # bounded: int() of thousands of digits is itself an error
    if not match:
        raise LoragenError(f"invalid base reference {quoted(ref)}: expected NAME or NAME@vN")
    return name, int(match.group(1))


def no_such_base(name: str, known: Sequence[str]) -> NotFound:
    hint = f" (known: {', '.join(known)})" if known else " (none registered: loragen base add NAME --from PATH)"
    return NotFound(f"no base model named {quoted(name)}{hint}")


def no_such_version(name: str, version: int | None) -> NotFound:
    return NotFound(f"base {quoted(name)} has no version v{version}")


def id_prefix_range(ref: str) -> tuple[str, str | None]:
    """[low, high) of the uids an id prefix names (high None: no upper end), for a range the uid's
    unique index answers (SQLite cannot use an index for LIKE 'abc%' on a case-sensitive column).
    high is the next hex string ('abc9' -> 'abca', 'abcf' -> 'abd'), not 'abc:': a punctuation
    bound would be ignored by PostgreSQL's locale collations."""
    ref = ref.strip().lower()
    if not re.fullmatch(r"[0-9a-f]+", ref) or len(ref) < MIN_ID_PREFIX:
        raise NotFound(f"{quoted(ref)} is not an adapter id (at least {MIN_ID_PREFIX} hex characters, see `loragen list`)")
    carried = ref.rstrip("f")
    if not carried:
        return ref, None
    return ref, carried[:-1] + HEX[HEX.index(carried[-1]) + 1]


def one_adapter(matches: Sequence[Any], low: str) -> Any:
    """The one adapter an id prefix's range matched (fetch at most two); NotFound for none or several."""
    if not matches:
        raise NotFound(f"no adapter with id {quoted(low)}")
    if len(matches) > 1:
        raise NotFound(f"adapter id {quoted(low)} is ambiguous: give more characters")
    return matches[0]


def adapter_view(uid: str, task: str, base: str, version: int, origin: str, rank: int, alpha: float,
                 target_modules: Any, parameters: int, weights_sha256: str, provenance: Any,
                 created_at: Any) -> dict[str, Any]:
    """An adapter as `show`, `list --json` and the library report it."""
    return {
        "id": uid[:12], "uid": uid, "task": task, "base": f"{base}@v{version}", "origin": origin, "rank": rank,
        "alpha": alpha, "target_modules": json_column(target_modules), "parameters": parameters,
        "weights_sha256": weights_sha256, "provenance": json_column(provenance), "created_at": iso_column(created_at),
    }


def json_column(value: Any) -> Any:
    """A JSON column: text from sqlite3, already decoded from SQLAlchemy's drivers."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def iso_column(value: Any) -> str:
    """A DateTime column: SQLite holds 'YYYY-MM-DD HH:MM:SS.ffffff' text; other drivers give datetimes."""
    return (value if isinstance(value, datetime) else datetime.fromisoformat(value)).isoformat()
