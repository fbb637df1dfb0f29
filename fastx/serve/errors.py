"""Errors as OpenAI's API sends them: `{"error": {"message", "type", "param", "code"}}` with the HTTP status."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error the client should see: raised anywhere in a route, turned into a JSON response by the app."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @property
    def type(self) -> str:
        if self.status == 401:
            return "authentication_error"
        if self.status == 404:
            return "not_found_error"
        if self.status == 503:
            return "service_unavailable_error"
        if self.status >= 500:
            return "server_error"
        return "invalid_request_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str | None, message: str, code: str = "invalid_value") -> APIError:
    """400 naming the field; the message starts with the field so it reads on its own."""
    text = f"{param}: {message}" if param else message
    return APIError(400, text, param=param, code=code)


def from_engine_error(exc: ValueError, param: str) -> APIError:
    """A ValueError of SamplingParams or Engine.validate_request, named after the request field it came from.

    Their messages start with the failing name ("SamplingParams.top_k: ...", "prompt_token_ids: ...").
    """
    message = str(exc)
    head, sep, rest = message.partition(":")
    name = head.removeprefix("SamplingParams.") if sep and " " not in head else None
    if name is None or name in ("prompt", "prompt_token_ids", "sampling_params"):
        return invalid(param, rest.strip() if sep and name else message)
    return invalid(name, rest.strip())


def format_validation_error(errors: list[dict[str, Any]]) -> APIError:
    """pydantic's first error -> 400 naming the field as a path (`messages[0].role`)."""
    first = errors[0]
    path = ""
    for part in first.get("loc", ()):
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and not _is_schema_frame(part):
            path += f".{part}" if path else part
    kind = first.get("type", "")
    if kind == "json_invalid":
        return invalid(None, f"the body is not valid JSON ({first.get('msg', '')})", code="invalid_json")
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if not path and kind == "value_error":  # a check across fields; its message starts with the field
        name, _, rest = message.partition(": ")
        return invalid(name, rest)
    if kind == "model_type" or not path:
        return invalid(None, f"the body must be a JSON object: {message}")
    if kind == "extra_forbidden":
        return invalid(path, "unknown field (not part of this API)", code="unknown_field")
    if kind == "missing":
        return invalid(path, "required field missing", code="missing")
    return invalid(path, f"{message}, got {_short(first.get('input'))}")


def _is_schema_frame(part: str) -> bool:
    """pydantic puts a union member's type (`str`, `list[TextPart]`) or a validator's frame in `loc`: not fields."""
    return part.startswith("function-") or "[" in part or part in ("str", "int", "float", "bool", "none")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
