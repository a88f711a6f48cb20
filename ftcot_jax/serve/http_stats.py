"""What `ftcot serve`'s HTTP side did, for GET /stats: responses sent by status class, clients that went away
before their response was complete, requests closed for arriving too slowly, connections refused over the
cap, and the connections open now. Written from the event loop (the routes' guard and the HTTP protocol).
"""

from __future__ import annotations

import threading


class HTTPStats:
    """Counters of the HTTP layer; `as_dict` is their part of /stats."""

    def __init__(self):
        self._lock = threading.Lock()
        self.http_4xx = self.http_5xx = 0  # responses sent (a client that went away first is not counted)
        self.client_disconnects = 0  # the client closed before its response was complete
        self.read_timeouts = 0  # headers or body not in within the read timeout: 408 (or closed if nothing came)
        self.refused_connections = 0  # over the connection cap: 503 at once
        self.open_connections = 0

    def sent(self, status: int) -> None:
        with self._lock:
            if status >= 500:
                self.http_5xx += 1
            elif status >= 400:
                self.http_4xx += 1

    def add(self, name: str, delta: int = 1) -> None:
        """`name`: client_disconnects, read_timeouts, refused_connections or open_connections."""
        with self._lock:
            setattr(self, name, getattr(self, name) + delta)

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "http_4xx": self.http_4xx,
                "http_5xx": self.http_5xx,
                "client_disconnects": self.client_disconnects,
                "read_timeouts": self.read_timeouts,
                "refused_connections": self.refused_connections,
                "open_connections": self.open_connections,
            }
