"""Triton endpoint URLs: one (`http://host:port`) or a comma-separated list of them.

Pure string handling, shared by the settings (validated at start-up, naming the variable) and the
Triton backend (which needs `host:port` and whether to use TLS).
"""

from __future__ import annotations

from urllib.parse import urlsplit


def parse_endpoint(url: str) -> tuple[str, bool]:
    """`http://host:port[/base]`, `https://...` or `host:port` -> (`host:port[/base]`, ssl)."""
    text = url.strip()
    if not text:
        raise ValueError("empty Triton endpoint")
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Triton endpoint must be http://host:port, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"Triton endpoint {url!r} has an invalid port") from None
    if port is None:
        raise ValueError(f"Triton endpoint {url!r} has no port (Triton's HTTP port is usually 8000)")
    return parts.netloc + parts.path.rstrip("/"), parts.scheme == "https"


def parse_endpoint_list(text: str) -> tuple[str, ...]:
    """`TRITON_ENDPOINT`: comma-separated `http(s)://host:port` URLs, each checked, none twice.

    Each comes back as written without a trailing `/`, the name it has in `/ready` and `/metrics`.
    """
    urls = tuple(part.strip().rstrip("/") for part in text.split(","))
    if urls == ("",):
        return ()
    seen: dict[tuple[str, bool], str] = {}
    for url in urls:
        if not url:
            raise ValueError("an empty entry in the list (two commas in a row, or one at an end)")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} must be the http://host:port URL of Triton's HTTP endpoint")
        key = parse_endpoint(url)
        if key in seen:
            raise ValueError(f"{url!r} names the same endpoint as {seen[key]!r}")
        seen[key] = url
    return urls
