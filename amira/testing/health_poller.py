"""`python -m amira.testing.health_poller URL`: `GET URL/health` in a loop until stdin closes.

Prints `polling` once the first answer came, then, when stdin ends, one JSON line: the longest
round trip (`max_ms`, a new connection's set-up included when the server closed the last one) and
the number of requests (`count`). A process of its own, so that its timing does not wait for the
GIL of the process that runs the test; it raises its own scheduling priority where it may, so that
the load a test generates on the same machine delays it less. See
`amira.testing.process.HealthPoller`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sys
import threading
import time
from urllib.parse import urlsplit

PAUSE_SECS = 0.005


def get_health(connection: http.client.HTTPConnection) -> None:
    """One `GET /health`; a connection the server closed is opened again (http.client does that)."""
    for attempt in range(3):
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
        except (ConnectionError, http.client.HTTPException):
            connection.close()
            if attempt == 2:
                raise
            continue
        if response.status != 200:
            raise RuntimeError(f"/health answered {response.status}")
        return


def main(url: str) -> None:
    with contextlib.suppress(PermissionError):  # ahead of the load generators, where allowed
        os.nice(-10)
    parts = urlsplit(url)
    stop = threading.Event()

    def stop_at_end_of_input() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=stop_at_end_of_input, daemon=True).start()
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    longest, count = 0.0, 0
    while not stop.is_set():
        started = time.perf_counter()
        get_health(connection)
        longest = max(longest, time.perf_counter() - started)
        count += 1
        if count == 1:
            print("polling", flush=True)
        time.sleep(PAUSE_SECS)
    print(json.dumps({"max_ms": 1000 * longest, "count": count}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
