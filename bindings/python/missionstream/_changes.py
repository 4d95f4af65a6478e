"""What changed between two states, in a person's terms (``watch --changes``).

For a QGroundControl plan (``"fileType": "Plan"`` with ``mission.items``):
the mission items moved (metres north/south, east/west), whose altitude
or command changed, added or removed, then any other part of the plan
changed (geofence, rally points, ...) as JSON paths. For any other JSON:
the paths that changed. For text that is not JSON: its size.
"""

from __future__ import annotations

import json
import math
from typing import Any, List, Optional, Tuple

__all__ = ["describe", "summary"]

#: At most this many changes are named in one line; the rest are counted.
MAX_SHOWN = 8

_MISSING = object()
_ALL = 10**9
_EARTH_RADIUS_M = 6_371_000.0


def _load(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _MISSING


def _items(doc: Any) -> Optional[List[Any]]:
    """The mission items of a QGroundControl plan, else None."""
    if not isinstance(doc, dict) or doc.get("fileType") != "Plan":
        return None
    mission = doc.get("mission")
    items = mission.get("items") if isinstance(mission, dict) else None
    return items if isinstance(items, list) else None


def summary(text: str) -> str:
    """One state, as a whole: a plan's item count, else its kind and size."""
    doc = _load(text)
    items = _items(doc)
    if items is not None:
        return f"plan of {len(items)} mission item(s), {len(text.encode('utf-8'))} bytes"
    if doc is _MISSING:
        return f"text (not JSON), {len(text.encode('utf-8'))} bytes"
    return f"JSON {type(doc).__name__ if not isinstance(doc, dict) else 'object'}, {len(text.encode('utf-8'))} bytes"


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _position(item: Any) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """(lat, lon, alt) of a SimpleItem (params 5, 6, 7)."""
    params = item.get("params") if isinstance(item, dict) else None
    if not isinstance(params, list) or len(params) < 7:
        return None, None, None
    return _num(params[4]), _num(params[5]), _num(params[6])


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"


def _item_change(number: int, old: Any, new: Any) -> Optional[str]:
    """``item 12 moved 3.1 m north, altitude 50 → 60 m`` (None if equal)."""
    if old == new:
        return None
    parts: List[str] = []
    lat0, lon0, alt0 = _position(old)
    lat1, lon1, alt1 = _position(new)
    if None not in (lat0, lon0, lat1, lon1) and (lat0, lon0) != (lat1, lon1):
        assert lat0 is not None and lon0 is not None and lat1 is not None and lon1 is not None
        north = math.radians(lat1 - lat0) * _EARTH_RADIUS_M
        east = math.radians(lon1 - lon0) * _EARTH_RADIUS_M * math.cos(math.radians((lat0 + lat1) / 2))
        moves = []
        if abs(north) >= 0.05:
            moves.append(f"{abs(north):.1f} m {'north' if north > 0 else 'south'}")
        if abs(east) >= 0.05:
            moves.append(f"{abs(east):.1f} m {'east' if east > 0 else 'west'}")
        parts.append("moved " + (" and ".join(moves) if moves else "less than 0.1 m"))
    if alt0 is not None and alt1 is not None and alt0 != alt1:
        parts.append(f"altitude {_fmt(alt0)} → {_fmt(alt1)} m")
    if isinstance(old, dict) and isinstance(new, dict):
        if old.get("command") != new.get("command"):
            parts.append(f"command {old.get('command')} → {new.get('command')}")
        known = {"params", "command", "Altitude"}
        other = sorted(k for k in set(old) | set(new) if k not in known and old.get(k, _MISSING) != new.get(k, _MISSING))
        oparams, nparams = old.get("params"), new.get("params")
        if isinstance(oparams, list) and isinstance(nparams, list):
            changed = [i + 1 for i in range(max(len(oparams), len(nparams)))
                       if i not in (4, 5, 6) and (oparams[i] if i < len(oparams) else _MISSING)
                       != (nparams[i] if i < len(nparams) else _MISSING)]
            if changed:
                other.append("param" + ("s " if len(changed) > 1 else " ") + ", ".join(map(str, changed)))
        if other:
            parts.append(", ".join(other) + " changed")
    return f"item {number} " + (", ".join(parts) if parts else "changed")


def _paths(old: Any, new: Any, path: str, out: List[str], limit: int) -> None:
    """JSON paths (``$.a.b[3]``) where ``old`` and ``new`` differ."""
    if len(out) > limit or old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"
            if key not in old:
                out.append(f"{sub} added")
            elif key not in new:
                out.append(f"{sub} removed")
            else:
                _paths(old[key], new[key], sub, out, limit)
        return
    if isinstance(old, list) and isinstance(new, list):
        for i in range(min(len(old), len(new))):
            _paths(old[i], new[i], f"{path}[{i}]", out, limit)
        if len(new) > len(old):
            out.append(f"{path}[{len(old)}:{len(new)}] added" if len(new) - len(old) > 1 else f"{path}[{len(old)}] added")
        elif len(old) > len(new):
            out.append(f"{path}[{len(new)}:{len(old)}] removed" if len(old) - len(new) > 1 else f"{path}[{len(new)}] removed")
        return
    out.append(path)


def _plan_changes(old: Any, new: Any, old_items: List[Any], new_items: List[Any], limit: int) -> List[str]:
    out: List[str] = []
    for i in range(min(len(old_items), len(new_items))):
        change = _item_change(i + 1, old_items[i], new_items[i])
        if change:
            out.append(change)
            if len(out) > limit:
                return out
    if len(new_items) > len(old_items):
        first, last = len(old_items) + 1, len(new_items)
        out.append(f"item {first} added" if first == last else f"items {first}-{last} added")
    elif len(old_items) > len(new_items):
        first, last = len(new_items) + 1, len(old_items)
        out.append(f"item {first} removed" if first == last else f"items {first}-{last} removed")
    # The rest of the plan (mission settings, geofence, rally points).
    rest_old = dict(old, mission={k: v for k, v in old["mission"].items() if k != "items"})
    rest_new = dict(new, mission={k: v for k, v in new["mission"].items() if k != "items"})
    _paths(rest_old, rest_new, "$", out, limit)
    return out


def describe(old_text: Optional[str], new_text: str) -> str:
    """What changed from ``old_text`` (None: nothing known before) to
    ``new_text``, in one line."""
    if old_text is None:
        return summary(new_text)
    if old_text == new_text:
        return "no change"
    old, new = _load(old_text), _load(new_text)
    if old is _MISSING or new is _MISSING:
        return f"{summary(new_text)} (was {len(old_text.encode('utf-8'))} bytes)"
    old_items, new_items = _items(old), _items(new)
    if old_items is not None and new_items is not None:
        changes = _plan_changes(old, new, old_items, new_items, _ALL)
    else:
        changes = []
        _paths(old, new, "$", changes, _ALL)
    if not changes:
        return "same JSON, reformatted"
    shown = changes[:MAX_SHOWN]
    more = len(changes) - len(shown)
    text = "; ".join(shown)
    if more > 0:
        text += f"; and {more} more"
    return f"{len(changes)} change(s): {text}"
