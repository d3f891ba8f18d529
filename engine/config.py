"""Config: every setting of a server in one frozen object, checked when it is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .hooks import HOOKS, Policy
from .ruleset import Limits

DEFAULT_GRPC = "0.0.0.0:9000"  # the port EMQX's documentation uses
DEFAULT_HTTP = "0.0.0.0:8080"  # VerneMQ webhooks
DEFAULT_METRICS = "0.0.0.0:9464"
DEFAULT_MAX_BODY = 1024 * 1024
POLICIES: tuple[Policy, ...] = ("deny", "ignore", "allow")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A setting that cannot work; the message names it and says what is accepted."""


def parse_address(value: str, what: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT'); port 0 asks the OS for a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{what} '{value}' is not HOST:PORT (e.g. 127.0.0.1:9000, or port 0 for any free port)")
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} '{value}': port {port} is out of range 0-65535")
    return host.strip("[]"), int(port)


def parse_policy(value: str) -> tuple[str, Policy]:
    """'HOOK=POLICY', e.g. client.authorize=ignore."""
    hook, sep, policy = value.partition("=")
    if not sep:
        raise ConfigError(f"failure policy '{value}' is not HOOK=POLICY (e.g. client.authorize=ignore)")
    if hook not in HOOKS:
        raise ConfigError(f"failure policy '{value}': unknown hook '{hook}'")
    if policy not in POLICIES:
        raise ConfigError(f"failure policy '{value}': policy must be one of {', '.join(POLICIES)}")
    return hook, policy


@dataclass(frozen=True)
class Config:
    rules: Path = Path("rules")
    grpc: str | None = DEFAULT_GRPC  # None: no EMQX ExHook server
    http: str | None = DEFAULT_HTTP  # None: no VerneMQ webhooks server
    metrics: str | None = DEFAULT_METRICS  # None: no metrics endpoint
    #: payloads come base64-encoded (vmq_webhooks' base64encode, on by default); an endpoint URL may
    #: say otherwise with ?base64=off
    vernemq_base64: bool = True
    http_max_body: int = DEFAULT_MAX_BODY
    log_level: str = "info"
    failure_policy: dict[str, Policy] = field(default_factory=dict)
    limits: Limits = Limits()
    polling: bool = False
    #: "stdout" or a file path; None: no decision log
    decision_log: str | None = None
    decision_log_sample: float = 1.0
    decision_log_secrets: bool = False
    grace_period: float = 5.0  # seconds calls in flight get to finish on shutdown

    def __post_init__(self) -> None:
        for value, flag in ((self.grpc, "--grpc"), (self.http, "--http"), (self.metrics, "--metrics")):
            if value is not None:
                parse_address(value, flag)
        if self.grpc is None and self.http is None:
            raise ConfigError("--grpc and --http are both off: nothing would be served")
        if self.http_max_body < 1024:
            raise ConfigError(f"--http-max-body {self.http_max_body} is too small: a webhook body needs at least 1024 bytes")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level '{self.log_level}' is not one of {', '.join(LOG_LEVELS)}")
        for hook, policy in self.failure_policy.items():
            parse_policy(f"{hook}={policy}")
        if not 0.0 < self.decision_log_sample <= 1.0:
            raise ConfigError(f"--decision-log-sample {self.decision_log_sample} must be above 0 and at most 1")
        if self.limits.max_steps < 1 or self.limits.timeout <= 0:
            raise ConfigError("rule limits must be positive (--max-steps, --rule-timeout)")
