"""The model catalogue the fake lists on `GET /v1/models` (ids from `anthropic.types.Model`).

Newest first, like the real API. Release dates of models without a date in their id are made up
(the fake has no way to know them); the shape is what matters to clients and proxies.
"""

from __future__ import annotations

from typing import Any

# (id, display name, created_at, deprecated_at, retires_at); the last two are None when active.
_MODELS: tuple[tuple[str, str, str, str | None, str | None], ...] = (
    ("claude-fable-5-2", "Claude Fable 5.2", "2026-09-15T00:00:00Z", None, None),
    ("claude-mythos-5-2", "Claude Mythos 5.2", "2026-09-15T00:00:00Z", None, None),
    ("claude-opus-5-5", "Claude Opus 5.5", "2026-08-20T00:00:00Z", None, None),
    ("claude-sonnet-5-5", "Claude Sonnet 5.5", "2026-08-20T00:00:00Z", None, None),
    ("claude-haiku-5-5", "Claude Haiku 5.5", "2026-08-20T00:00:00Z", None, None),
    ("claude-fable-5-1", "Claude Fable 5.1", "2026-07-01T00:00:00Z", None, None),
    ("claude-mythos-5-1", "Claude Mythos 5.1", "2026-07-01T00:00:00Z", None, None),
    ("claude-fable-5", "Claude Fable 5", "2026-05-20T00:00:00Z", None, None),
    ("claude-mythos-5", "Claude Mythos 5", "2026-05-20T00:00:00Z", None, None),
    ("claude-opus-5", "Claude Opus 5", "2026-05-20T00:00:00Z", None, None),
    ("claude-sonnet-5", "Claude Sonnet 5", "2026-05-20T00:00:00Z", None, None),
    ("claude-opus-4-8", "Claude Opus 4.8", "2026-04-15T00:00:00Z", None, None),
    ("claude-opus-4-7", "Claude Opus 4.7", "2026-03-20T00:00:00Z", None, None),
    ("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z", None, None),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-05T00:00:00Z", None, None),
    ("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-24T00:00:00Z", None, None),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15T00:00:00Z", None, None),
    (
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
        "2026-05-30T00:00:00Z",
        "2026-11-30T00:00:00Z",  # the SDK's DEPRECATED_MODELS date
    ),
)

MODEL_INFOS: tuple[dict[str, Any], ...] = tuple(
    {
        "type": "model",
        "id": model_id,
        "display_name": display_name,
        "created_at": created_at,
        "lifecycle": "active" if deprecated_at is None else "deprecated",
        "deprecated_at": deprecated_at,
        "retires_at": retires_at,
    }
    for model_id, display_name, created_at, deprecated_at, retires_at in _MODELS
)

MODEL_INFO_BY_ID: dict[str, dict[str, Any]] = {info["id"]: info for info in MODEL_INFOS}

MODEL_PREFIX = "claude-"


def is_known_model(model: str) -> bool:
    """The fake serves any model id that starts with "claude-" (the real API 404s the rest)."""
    return model.startswith(MODEL_PREFIX)


def list_models(*, limit: int, after_id: str | None, before_id: str | None) -> dict[str, Any]:
    """A page of the catalogue in Anthropic's list shape (`after_id`/`before_id` are cursors)."""
    ids = [info["id"] for info in MODEL_INFOS]
    if after_id is not None:
        start = ids.index(after_id) + 1 if after_id in ids else len(ids)
        window = list(MODEL_INFOS[start:])
        page, has_more = window[:limit], len(window) > limit
    elif before_id is not None:
        end = ids.index(before_id) if before_id in ids else 0
        window = list(MODEL_INFOS[:end])
        page, has_more = window[-limit:], len(window) > limit
    else:
        window = list(MODEL_INFOS)
        page, has_more = window[:limit], len(window) > limit
    return {
        "data": page,
        "has_more": has_more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
