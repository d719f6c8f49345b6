"""A quick reachability probe: clients with no network retry for tens of seconds or
minutes, so the project asks the question itself, once, with a short timeout."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def reachable(url: str, timeout: float = 3.0) -> bool:
    """True when the URL's host accepts a TCP connection within `timeout` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but at call time, not import time."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "on", "true", "yes")


def hub_reachable() -> bool:
    """True unless HF_HUB_OFFLINE is set or the Hub endpoint does not answer within 3 s."""
    from huggingface_hub import constants

    return not hub_offline() and reachable(constants.ENDPOINT)
