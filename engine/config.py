"""Config: every setting of a server in one frozen object, checked when it is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .hooks import HOOKS, Policy
from .ruleset import Limits

DEFAULT_GRPC = "0.0.0.0:9000"  # the port EMQX's documentation uses
DEFAULT_METRICS = "0.0.0.0:9464"
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
    grpc: str = DEFAULT_GRPC
    metrics: str | None = DEFAULT_METRICS  # None: no metrics endpoint
    log_level: str = "info"
    failure_policy: dict[str, Policy] = field(default_factory=dict)
    limits: Limits = Limits()
    polling: bool = False
    grace_period: float = 5.0  # seconds calls in flight get to finish on shutdown

    def __post_init__(self) -> None:
        parse_address(self.grpc, "--grpc")
        if self.metrics is not None:
            parse_address(self.metrics, "--metrics")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level '{self.log_level}' is not one of {', '.join(LOG_LEVELS)}")
        for hook, policy in self.failure_policy.items():
            parse_policy(f"{hook}={policy}")
        if self.limits.max_steps < 1 or self.limits.timeout <= 0:
            raise ConfigError("rule limits must be positive (--max-steps, --rule-timeout)")
