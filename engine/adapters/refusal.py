"""The refusal of a call hookrules cannot read, shared by the broker mappings and their HTTP front-ends
(standard library only: the mappings know no wire library)."""

from __future__ import annotations


class BadRequest(Exception):
    """A call hookrules cannot read; `status` is the HTTP status, `reason` the metric label, the message
    says what is wrong."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
