"""Credentials never leave the process: redaction of URIs, messages and written records.

Object-store credentials belong in the environment (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, GOOGLE_APPLICATION_CREDENTIALS, an instance
role, a Kubernetes service account). A URI may still carry them, as pyarrow accepts
(`s3://KEY:SECRET@bucket/path`, `?access_key=...&secret_key=...&session_token=...`):
bertml then warns once and writes the URI only through `redact`, in every log line,
config dump, manifest, Parquet metadata, report and error message.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("bertml")

MASK = "***"
# Query options that carry a secret (pyarrow's S3/GCS URI options; fsspec's names too).
SECRET_OPTIONS = ("access_key", "secret_key", "session_token", "access_token", "secret", "token",
                  "key", "password", "credentials", "sas_token", "account_key", "external_id")
_URI = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"]+)")
_OPTION = re.compile(r"(?P<lead>[?&;](?P<name>[^=&?;#\s'\"]+)=)(?P<value>[^&;\s'\"]*)")
_AT = re.compile(r"[^\s'\"=&?;]*@")  # user info inside an option value (endpoint_override=user:pw@host)


def _is_secret_option(name: str) -> bool:
    from urllib.parse import unquote

    return unquote(name).lower() in SECRET_OPTIONS


def _uri(m: re.Match) -> str:
    """One URI: everything between `scheme://` and the last `@` of its authority-and-path
    part is user info (a secret may hold unencoded `/`, `@`, `#`), and secret options."""
    rest = m["rest"]
    q = rest.find("?")
    head, query = (rest, "") if q < 0 else (rest[:q], rest[q:])
    if "@" in head:
        head = MASK + head[head.rindex("@"):]
    return m["scheme"] + head + _options(query)


def _options(text: str) -> str:
    def one(m: re.Match) -> str:
        if _is_secret_option(m["name"]):
            return m["lead"] + MASK
        return m["lead"] + _AT.sub(MASK + "@", m["value"]) if "@" in m["value"] else m[0]

    return _OPTION.sub(one, text)


def has_secret(text: str) -> bool:
    """True when `text` holds a URI with user info or a credential query option."""
    return isinstance(text, str) and redact(text) != text


def redact(text: Any) -> Any:
    """`text` with URI credentials masked (`s3://***@bucket/...`, `secret_key=***`).

    Strings are redacted; dicts, lists and tuples recursively (keys too); anything else is
    returned unchanged."""
    if isinstance(text, str):
        if "://" not in text and "=" not in text:
            return text
        return _options(_URI.sub(_uri, text)) if "://" not in text else _URI.sub(_uri, text)
    if isinstance(text, dict):
        return {redact(k): redact(v) for k, v in text.items()}
    if isinstance(text, (list, tuple)):
        return type(text)(redact(v) for v in text)
    return text


def location(path: str) -> str:
    """Where a path or URI points, for comparing two of them: a URI without user info and
    options (`s3://bucket/key`), a local path resolved. No filesystem is contacted."""
    import os

    if "://" in path and not path.startswith("file://"):
        scheme, rest = path.split("://", 1)
        rest = rest.split("?", 1)[0]
        rest = rest[rest.rindex("@") + 1:] if "@" in rest else rest
        return f"{scheme.lower()}://{rest.rstrip('/')}"
    path = path[len("file://"):] if path.startswith("file://") else path
    return os.path.realpath(os.path.expanduser(path))


def overlap(a: str, b: str) -> bool:
    """Whether two paths/URIs are the same place or one lies below the other."""
    x, y = location(a), location(b)
    return x == y or x.startswith(y.rstrip("/") + "/") or y.startswith(x.rstrip("/") + "/")


def warn_inline(values: dict[str, Any]) -> list[str]:
    """Log one warning per config key whose URI carries credentials; returns those keys."""
    keys = []
    for key, v in values.items():
        for s in v if isinstance(v, (list, tuple)) else [v]:
            if isinstance(s, str) and has_secret(s):
                keys.append(key)
                log.warning("%s carries credentials in its URI (%s); they are never written or printed, "
                            "but pass them through the environment instead (AWS_ACCESS_KEY_ID, "
                            "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or an instance role)", key, redact(s))
                break
    return keys


def flat_paths(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Every string / list-of-string field of a (nested) config dataclass, by dotted key."""
    import dataclasses

    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update(flat_paths(v, f"{prefix}{f.name}."))
        elif isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            out[prefix + f.name] = v
    return out
