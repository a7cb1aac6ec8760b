"""``zeropod status``: what the node's manager knows, as a table for people or as JSON."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"


def _size(value: int) -> str:
    return "-" if not value else f"{value / 2**20:.1f}MiB"


def render_table(containers: list[dict[str, Any]], now: float) -> str:
    rows = [("CONTAINER", "POD", "PHASE", "FOR", "LAST WAKE", "IMAGE")]
    for c in sorted(containers, key=lambda c: (c["namespace"], c["pod"], c["name"])):
        pod = f"{c['namespace']}/{c['pod']}" if c["pod"] else "-"
        rows.append((c["name"], pod, c["phase"], _ago(max(0.0, now - c["since"])),
                     _ms(c.get("last_wake_s") or c.get("last_restore_s")),
                     _size(c.get("image_bytes", 0))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def show_status(manager: str, *, as_json: bool) -> int:
    try:
        with urllib.request.urlopen(f"http://{manager}/status", timeout=10) as reply:
            data = json.loads(reply.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        sys.stderr.write(f"zeropod status: cannot reach the manager at {manager}: {exc}\n")
        return 1
    if as_json:
        json.dump(data, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(data["containers"], time.time()) + "\n")
    return 0
