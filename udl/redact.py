"""Credentials out of what udl writes or logs: run records, manifests, log lines."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["redact"]

# The password of a URL's user info (``scheme://user:password@host``): a credential that a
# config value (an fsspec URL, a scheduler address) may carry, never written to run records.
_URL_PASSWORD = re.compile(r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*:)[^/?#@\s]+@")


def redact(value: Any) -> Any:
    """`value` (JSON-like) with every URL password replaced by ``***``.

    Example:
        >>> redact({"dask_address": "tcp://udl:s3cret@scheduler:8786"})
        {'dask_address': 'tcp://udl:***@scheduler:8786'}
    """
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<keep>***@", value)
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
