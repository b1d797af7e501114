"""Probing the run's processes from outside: an HTTP status, a condition polled until it holds."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

from ..services import Service


def http_status(service: Service, path: str) -> int | None:
    """The HTTP status of GET path (None: nothing answers)."""
    try:
        with urllib.request.urlopen(service.url + path, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> float:
    """Poll until `condition()`; returns the seconds it took."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)
    return time.monotonic() - began
