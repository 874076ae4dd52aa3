"""Database addresses without their passwords, for every message that shows one.

Standard library only, so storage and the command line can both use it. Handles PostgreSQL URLs
(`postgresql://user:password@host/db`, the password possibly holding unencoded '@', ':' or '/':
the credentials end at the last '@'), key/value DSNs (`password=...`, quoted values with
spaces and escapes too) and query parameters (`?password=...`, `sslpassword=...`).
"""

from __future__ import annotations

import re
from os import PathLike
from urllib.parse import unquote

MASK = "***"

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_QUERY_PASSWORD = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)
_KV_PASSWORD = re.compile(
    r"""(\b\w*password\s*=\s*)('(?:\\.|\\$|[^'\\])*'?|(?:\\.|\\$|[^\s\\])+)""", re.IGNORECASE)


def redact_dsn(dsn: str | PathLike[str]) -> str:
    """`dsn` with every password replaced by ***; a file path comes back unchanged."""
    text = str(dsn)
    scheme = _SCHEME.match(text)
    if scheme is None:
        return _KV_PASSWORD.sub(lambda m: m[1] + MASK, text)
    rest = text[scheme.end():]
    at = _credentials_end(rest)
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = user + (":" + MASK if colon else "") + rest[at:]
    return scheme[0] + _QUERY_PASSWORD.sub(lambda m: m[1] + MASK, rest)


def dsn_passwords(dsn: str | PathLike[str]) -> set[str]:
    """The passwords in `dsn`, as written and decoded (percent-encoding, quotes and escapes
    undone), to scrub them from text that may quote them, such as a driver's error message."""
    text = str(dsn)
    found = set()
    scheme = _SCHEME.match(text)
    if scheme is None:
        for match in _KV_PASSWORD.finditer(text):
            value = match[2]
            found |= {value, re.sub(r"\\(.)", r"\1", value[1:-1] if value[:1] == "'" else value)}
    else:
        rest = text[scheme.end():]
        userinfo = rest[:max(_credentials_end(rest), 0)]
        values = [userinfo.partition(":")[2]] if ":" in userinfo else []
        values += [m[0].partition("=")[2] for m in _QUERY_PASSWORD.finditer(rest)]
        found = {form for value in values for form in (value, unquote(value))}
    return {f for f in found if f}


def _credentials_end(rest: str) -> int:
    """Where a URL's credentials end (after the scheme): its last '@' before the query string,
    as a password may hold '@' unencoded but a query may too (`application_name=me@laptop`);
    the last '@' at all when the part before the first '?' has none (a '?' in the password).
    -1 when there are no credentials."""
    query = rest.find("?")
    at = rest.rfind("@", 0, query) if query >= 0 else -1
    return at if at >= 0 else rest.rfind("@")


def secret_fragments(dsn: str | PathLike[str]) -> set[str]:
    """The passwords in `dsn` and, after each '@', ':' or '/' in one, the rest of it: a driver
    that splits the URL at such a character of an unencoded password quotes the rest as the
    host. Pieces under four characters are left out (they would mangle unrelated words; the
    URL itself is always shown redacted)."""
    fragments = set()
    for password in dsn_passwords(dsn):
        tails = {password[i + 1:] for i, char in enumerate(password) if char in "@:/"}
        fragments |= {p for p in (password, *tails) if len(p) >= 4}
    return fragments


def scrub(text: str, dsn: str | PathLike[str]) -> str:
    """`text` (a driver's error message, say) without any fragment of `dsn`'s passwords."""
    for fragment in sorted(secret_fragments(dsn), key=len, reverse=True):
        text = text.replace(fragment, MASK)
    return text.replace(str(dsn), redact_dsn(dsn))

