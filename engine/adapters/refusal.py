"""The refusal of a call hookrules cannot read, shared by the broker mappings and their HTTP front-ends
(standard library only: the mappings know no wire library)."""

from __future__ import annotations

from urllib.parse import parse_qsl


class BadRequest(Exception):
    """A call hookrules cannot read; `status` is the HTTP status, `reason` the metric label, the message
    says what is wrong."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason


def unique_fields(raw: str, max_fields: int) -> dict[str, str]:
    """The fields of a query string or form body, each once. A repeated field is refused: which copy the
    broker meant cannot be known, and a rule must never read one copy while a log shows the other."""
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=max_fields)
    except UnicodeDecodeError:
        raise BadRequest(400, "bad_encoding", "the fields are not UTF-8") from None
    except ValueError:
        raise BadRequest(400, "too_many_fields", f"more than {max_fields} fields") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise BadRequest(400, "repeated_field", f"field '{key[:40]}' is given twice")
        fields[key] = value
    return fields

