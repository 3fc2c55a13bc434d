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
                  "key", "password", "credentials", "sas_token", "account_key")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s?#'\"]+)@")
_OPTION = re.compile(r"(?P<lead>[?&;](?:" + "|".join(SECRET_OPTIONS) + r")=)(?P<value>[^&#\s'\"]*)", re.IGNORECASE)


def has_secret(text: str) -> bool:
    """True when `text` holds a URI with user info or a credential query option."""
    return bool(_USERINFO.search(text) or _OPTION.search(text))


def redact(text: Any) -> Any:
    """`text` with URI credentials masked (`s3://***@bucket/...`, `secret_key=***`).

    Strings are redacted; dicts, lists and tuples recursively (keys too); anything else is
    returned unchanged."""
    if isinstance(text, str):
        if "://" not in text and "=" not in text:
            return text
        text = _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
        return _OPTION.sub(lambda m: m["lead"] + MASK, text)
    if isinstance(text, dict):
        return {redact(k): redact(v) for k, v in text.items()}
    if isinstance(text, (list, tuple)):
        return type(text)(redact(v) for v in text)
    return text


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
