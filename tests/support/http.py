"""Reading the JSON that a local server (Ray's dashboard, Prometheus) answers."""
from __future__ import annotations

import json
import urllib.request


def get_json(url: str, token: str | None = None) -> dict:
    """GET `url` (with the Ray token as a bearer header if given) and parse its JSON."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)
