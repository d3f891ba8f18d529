"""EMQX's HTTP authenticator and authorizer, served: one call's plain values in, (status, JSON body) out.

Everything but reading the request and writing the response lives here, with no HTTP library, so
any front-end of the `--http` port can serve it (emqx_http_route.py is httpwire's). Every call at
/emqx/authn or /emqx/authz gets a 200 with a `result` EMQX reads (emqx_http.py says why): a rule's
decision, the failure policy's when the rule failed, and for a call hookrules could not read (bad
body, overload) deny or ignore by the failure policy, never allow; it is counted in
hookrules_bad_requests_total{broker="emqx"} and logged on one rate-limited line without the
request's text. Only a request that is no EMQX call (an unknown path under /emqx/, a method EMQX
never sends) gets a 404 or 405.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import metrics
from ..engine import Engine
from ..ratelimit import Every
from .emqx_http import BROKER, PATHS, BadRequest, event_for, parse_request, refusal_body, reply_body
from .jsonwire import encode

log = logging.getLogger(__name__)

BAD_REQUEST_LOG_INTERVAL = 10.0
CONTENT_TYPE = "application/json"
Answer = tuple[int, bytes]


class EmqxHttpService:
    """Answers every call of EMQX's HTTP authenticator and authorizer from the engine's rules."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._bad_log = Every(BAD_REQUEST_LOG_INTERVAL)
        self._timers: dict[str, Any] = {}

    def check(self, path: str, method: str) -> Answer | None:
        """A request that is no EMQX call (unknown path or method) is refused before its body is read."""
        if path not in PATHS:
            return self.error(BadRequest(404, "unknown_path", f"unknown path {path[:60]!r}; EMQX's paths: "
                                          + ", ".join(PATHS)))
        if method not in ("GET", "POST"):
            return self.error(BadRequest(405, "bad_method", f"EMQX's HTTP auth sends GET or POST, not "
                                          f"{method[:20]}"))
        return None

    def observe(self, path: str, started: float) -> None:
        """The call's time, in hookrules_request_duration_seconds (admission is the port's own)."""
        self._timer(PATHS[path]).observe(time.perf_counter() - started)

    def answer(self, path: str, method: str, query: str, content_type: str, body: bytes) -> Answer:
        """One call, whatever it holds: a 200 EMQX reads, never an exception out of here."""
        hook = PATHS[path]
        try:
            event = event_for(hook, parse_request(method, query, content_type, body))
            # no rule file: decide() answers ignore(), and EMQX asks its next authenticator or source
            decision = self.engine.decide(event).decision
            try:
                return 200, reply_body(hook, decision)
            except Exception:  # a value the encoder refused (decision_problem let it through): policy
                return 200, reply_body(hook, self.engine.internal_error(BROKER, hook))
        except BadRequest as bad:
            return self.refuse(path, bad)
        except RecursionError:  # a body the decoder took, too deep to copy read-only
            return self.refuse(path, BadRequest(400, "too_deep", "the body is nested too deeply"))
        except Exception:  # a bug of ours: still an answer EMQX reads, by the failure policy
            return 200, reply_body(hook, self.engine.internal_error(BROKER, hook))

    def refuse(self, path: str, bad: BadRequest) -> Answer:
        """A call at an EMQX path that hookrules could not read: counted, logged (rate-limited), and
        answered 200 with deny or ignore by the hook's failure policy (emqx_http.refusal_body)."""
        hook = PATHS[path]
        self._count(bad)
        if self._bad_log.due():
            log.warning("refused an EMQX %s call: %s (answered %s by failure policy); more within %.0f s are only "
                        "counted in hookrules_bad_requests_total", hook, bad,
                        refusal_body(self.engine.policy(hook)).decode(), BAD_REQUEST_LOG_INTERVAL)
        return 200, refusal_body(self.engine.policy(hook))

    def error(self, bad: BadRequest) -> Answer:
        self._count(bad)
        if self._bad_log.due():
            log.warning("refused a request under /emqx/: %s (HTTP %d); more within %.0f s are only counted in "
                        "hookrules_bad_requests_total", bad, bad.status, BAD_REQUEST_LOG_INTERVAL)
        return bad.status, encode({"error": str(bad)})

    @staticmethod
    def _count(bad: BadRequest) -> None:
        metrics.BAD_REQUESTS.labels(BROKER, bad.reason).inc()

    def _timer(self, hook: str) -> Any:
        timer = self._timers.get(hook)
        if timer is None:
            timer = self._timers[hook] = metrics.REQUEST_SECONDS.labels(BROKER, hook)
        return timer
