"""Secret scrubbing: teacher API keys never reach the cache. String fields and error texts lose the values of
*_API_KEY / *_TOKEN / *_SECRET environment variables (and of keys passed to register_secret) and anything that
looks like a bearer token or an api-key=...; endpoint URLs lose credentials and query strings."""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from urllib.parse import urlsplit, urlunsplit

from ftcot_jax.teacher.records import STR_FIELDS, TeacherRecord

_REGISTERED: set[str] = set()


def register_secret(value: str | None) -> None:
    """Adds a key that is not in a *_API_KEY / *_TOKEN / *_SECRET variable (e.g. `--api-key-env MYVAR`)
    to what caches opened afterwards scrub."""
    if value and len(value) >= 8:
        _REGISTERED.add(value)


def secret_values() -> list[str]:
    names = [k for k in os.environ if k.endswith(("_API_KEY", "_TOKEN", "_SECRET")) or k == "OPENAI_API_KEY"]
    values = {os.environ[k] for k in names if len(os.environ[k]) >= 8} | _REGISTERED
    return sorted(values, key=len, reverse=True)


_KEYLIKE = re.compile(r"(?i)(bearer\s+|api[-_]?key[=:]\s*)[A-Za-z0-9._\-]{8,}")


def scrub(text: str, secret_values: list[str] | None = None) -> str:
    """Removes API key values (from the environment) and bearer tokens / api-key=... from a text
    (error messages, endpoints)."""
    return _KEYLIKE.sub(r"\1[redacted]", _remove_values(text, secret_values))


def _remove_values(text: str, secret_values: list[str] | None = None) -> str:
    for value in secret_values() if secret_values is None else secret_values:
        if value in text:
            text = text.replace(value, "[redacted]")
    return text


def clean_endpoint(url: str, secret_values: list[str] | None = None) -> str:
    """An endpoint URL without user:password@ and without a query string (some gateways put keys there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url, secret_values)
    if not parts.scheme:
        return scrub(url, secret_values)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return scrub(urlunsplit((parts.scheme, netloc, parts.path, "", "")), secret_values)


def scrubbed(rec: TeacherRecord, secret_values: list[str]) -> TeacherRecord:
    """Key values never reach the disk, whatever field they leaked into; endpoints lose credentials."""
    changes = {n: _remove_values(getattr(rec, n), secret_values) for n in STR_FIELDS if n != "endpoint"}
    changes["endpoint"] = clean_endpoint(rec.endpoint, secret_values)
    changes = {k: v for k, v in changes.items() if v != getattr(rec, k)}
    if not changes:
        return rec
    d = asdict(rec)
    d.update(changes)
    return TeacherRecord(**d)
