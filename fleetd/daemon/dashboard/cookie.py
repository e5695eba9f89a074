"""What a browser sends instead of an ``Authorization`` header.

A browser cannot put a bearer token on a link it follows, so the dashboard's login page
hands the token once, in the header, to ``POST /ui/session``, which answers with it as a
cookie (``COOKIE``: HttpOnly, so no script reads it back; SameSite=Strict, so no other
site's page makes the browser send it; Secure over TLS). From then on the access checks
(http/access.py) read the token from that cookie as they read the header: the same
token store, the same roles, a revoked token refused at once.

A cookie rides along with whatever the browser sends, so it is taken only where that
cannot be forged from another site: reads (GET, HEAD: other sites' pages cannot read
the answers) and writes that carry ``HEADER`` - a header no form and no cross-site
request can add without a CORS preflight, which fleetd never grants. A write with the
cookie but without the header is refused as if it had no token (401).
"""

from __future__ import annotations

from typing import Mapping

COOKIE = "fleetd_token"
HEADER = "X-Fleetd-Dashboard"
READS = ("GET", "HEAD")


def authorization(method: str, headers: Mapping[str, str], cookies: Mapping[str, str]
                  ) -> str:
    """The Authorization header the access checks read: the request's own, else the
    dashboard's cookie as ``Bearer`` where it may stand in for one, else ``""``."""
    given = headers.get("Authorization", "")
    if given:
        return given
    token = cookies.get(COOKIE, "")
    if not token or (method not in READS and headers.get(HEADER) != "1"):
        return ""
    return f"Bearer {token}"
