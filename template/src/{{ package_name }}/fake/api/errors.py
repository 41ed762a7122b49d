"""What every `/v1/` route may answer besides its own result: an error object, by status."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for code, text in (
        (400, "Validation error"),
        (401, "Missing, unknown or revoked API key"),
        (403, "Missing scope or action not allowed"),
        (404, "Not found"),
        (409, "Conflict"),
        (429, "Rate limited"),
    )
}
