"""Config: every setting of a server in one frozen object, checked when it is made."""

from __future__ import annotations

import errno
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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


def bind_problem(exc: OSError) -> str:
    """What a failed bind means, for the message that refuses to start."""
    why = {errno.EADDRINUSE: " (is another server on that port?)",
           errno.EADDRNOTAVAIL: " (that address is not one of this machine's)",
           errno.EACCES: " (ports below 1024 need privileges)"}.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}{why}"


def parse_workers(value: object) -> int:
    """--workers / `workers`: a whole number of at least 1, or "auto": one per CPU this process may run on."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"--workers {value!r} is not a number of worker processes (1 or more, or auto)")
    if value < 1:
        raise ConfigError(f"--workers {value} must be at least 1 (or auto: one per CPU)")
    return value


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


def watchdog_limit(hard_timeout: float | None, rule_timeout: float) -> float:
    """--hard-timeout, or by default 5 s (EMQX's default request_timeout: the broker has given up on
    the call anyway) or twice the rule timeout when that is longer; 0: no watchdog."""
    return hard_timeout if hard_timeout is not None else max(5.0, 2 * rule_timeout)


def check_timeouts(rule_timeout: float, hard_timeout: float | None) -> None:
    """What `serve` and `hookrules test` both require of their time limits."""
    limit = watchdog_limit(hard_timeout, rule_timeout)
    for number, flag in ((rule_timeout, "--rule-timeout"), (limit, "--hard-timeout")):
        if not math.isfinite(number):
            raise ConfigError(f"{flag} {number} must be a finite number")
    if rule_timeout <= 0:
        raise ConfigError("rule limits must be positive (--max-steps, --rule-timeout)")
    if hard_timeout and hard_timeout <= rule_timeout:
        raise ConfigError(f"--hard-timeout {hard_timeout} must be above --rule-timeout {rule_timeout} "
                          "(or 0 for no watchdog)")


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
    #: seconds one rule run may hold the server before the watchdog process kills it; None: the
    #: default (see watchdog_limit)
    hard_timeout: float | None = None
    #: calls in progress at once before more are refused (gRPC RESOURCE_EXHAUSTED, HTTP 503)
    max_concurrent_calls: int = 1000
    #: TLS for both front-ends (EMQX https:// exhook URLs, HTTPS webhooks); a client CA asks for mTLS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    #: worker processes sharing the ports (1: this process serves alone; see supervisor.py)
    workers: int = 1
    #: which worker of a supervisor's group this process is (1..workers); 0: not a worker. Set only by
    #: the supervisor (the hidden --supervised-worker flag): it shares the ports with SO_REUSEPORT
    worker: int = 0
    #: a second rules directory run beside the live one after each answer, to compare (shadow.py); None: none
    shadow: Path | None = None
    #: share of calls the shadow rules run on (None: shadow.DEFAULT_SAMPLE)
    shadow_sample: float | None = None
    #: the shadow rules' own budget per run (None: the live one's)
    shadow_rule_timeout: float | None = None
    shadow_max_steps: int | None = None
    #: the TOML file these settings came from, re-read on SIGHUP
    config_file: Path | None = None
    #: the settings the command line gave, which override the file again after a SIGHUP
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def watchdog_limit(self) -> float:
        """--hard-timeout, or its default (above the shadow rules' timeout too); 0: no watchdog."""
        return watchdog_limit(self.hard_timeout, max(self.limits.timeout, self.shadow_limits.timeout))

    @property
    def shadow_limits(self) -> Limits:
        """The shadow rules' budget per run: their own where given, else the live rules'."""
        return Limits(self.shadow_max_steps if self.shadow_max_steps is not None else self.limits.max_steps,
                      self.shadow_rule_timeout if self.shadow_rule_timeout is not None else self.limits.timeout)

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
        check_timeouts(self.limits.timeout, self.hard_timeout)
        for number, flag in ((self.grace_period, "--grace-period"),
                             (self.decision_log_sample, "--decision-log-sample")):
            if not math.isfinite(number):
                raise ConfigError(f"{flag} {number} must be a finite number")
        if self.limits.max_steps < 1:
            raise ConfigError("rule limits must be positive (--max-steps, --rule-timeout)")
        if self.grace_period < 0:
            raise ConfigError(f"--grace-period {self.grace_period} must be 0 or more seconds")
        self._check_shadow()
        parse_workers(self.workers)
        if self.worker < 0:
            raise ConfigError(f"internal: worker {self.worker}")
        if self.max_concurrent_calls < 1:
            raise ConfigError(f"--max-concurrent-calls {self.max_concurrent_calls} must be at least 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key too")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca):
            if path is not None and not path.is_file():
                raise ConfigError(f"TLS file {path} does not exist")

    def _check_shadow(self) -> None:
        sample, timeout, steps = self.shadow_sample, self.shadow_rule_timeout, self.shadow_max_steps
        if sample is not None and not (math.isfinite(sample) and 0.0 < sample <= 1.0):
            raise ConfigError(f"--shadow-sample {sample} must be above 0 and at most 1")
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ConfigError(f"--shadow-rule-timeout {timeout} must be a positive number of seconds")
        if steps is not None and steps < 1:
            raise ConfigError(f"--shadow-max-steps {steps} must be at least 1")
        if self.hard_timeout and timeout is not None and self.hard_timeout <= timeout:
            raise ConfigError(f"--shadow-rule-timeout {timeout} must be below --hard-timeout {self.hard_timeout} (the "
                              "watchdog would kill the server for a shadow run still within its budget)")
        if self.shadow is not None and not self.shadow.is_dir():
            raise ConfigError(f"the shadow rules directory {self.shadow} does not exist or is not a directory (--shadow)")
        if self.shadow is not None and self.shadow.resolve() == self.rules.resolve():
            raise ConfigError(f"--shadow {self.shadow} is the live rules directory: give the directory with the changed rules")


#: TOML layout: [section] -> {key: (Config field, type)}; "" is the top level
FILE_KEYS: dict[str, dict[str, tuple[str, type | tuple[type, ...]]]] = {
    "": {"rules": ("rules", str), "grpc": ("grpc", str), "http": ("http", str), "metrics": ("metrics", str),
         "log_level": ("log_level", str), "polling": ("polling", bool), "grace_period": ("grace_period", (int, float)),
         "max_concurrent_calls": ("max_concurrent_calls", int), "workers": ("workers", (int, str)),
         "shadow": ("shadow", str), "shadow_sample": ("shadow_sample", (int, float))},
    "limits": {"max_steps": ("max_steps", int), "rule_timeout": ("rule_timeout", (int, float)),
               "hard_timeout": ("hard_timeout", (int, float)), "shadow_max_steps": ("shadow_max_steps", int),
               "shadow_rule_timeout": ("shadow_rule_timeout", (int, float))},
    "vernemq": {"base64": ("vernemq_base64", bool), "max_body": ("http_max_body", int)},
    "decision_log": {"target": ("decision_log", str), "sample": ("decision_log_sample", (int, float)),
                     "secrets": ("decision_log_secrets", bool)},
    "tls": {"cert": ("tls_cert", str), "key": ("tls_key", str), "client_ca": ("tls_client_ca", str)},
}
_PATHS = {"rules", "tls_cert", "tls_key", "tls_client_ca", "shadow"}
_OFF = {"grpc", "http", "metrics", "decision_log", "shadow"}


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML file, as Config keyword arguments (plus max_steps/rule_timeout for Limits).

    Relative paths are relative to the file's directory. Every problem names the key and what is accepted.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {"config_file": path}
    base = path.parent
    sections = {k: v for k, v in raw.items() if isinstance(v, dict)}
    top = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    for section, table in [("", top), *sections.items()]:
        where = f"[{section}] " if section else ""
        if section == "failure_policy":
            out["failure_policy"] = dict(parse_policy(f"{hook}={policy}") for hook, policy in table.items())
            continue
        known = FILE_KEYS.get(section)
        if known is None:
            raise ConfigError(f"config file {path}: unknown section [{section}]; sections: "
                              + ", ".join(f"[{s}]" for s in FILE_KEYS if s) + ", [failure_policy]")
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"config file {path}: unknown key {where}{key}; known: {', '.join(known)}")
            name, kind = known[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise ConfigError(f"config file {path}: {where}{key} = {value!r} has the wrong type")
            if name in _OFF and value == "off":
                value = None
            elif name in _PATHS:
                value = base / str(value)
            out[name] = value
    return out


def build_config(file_settings: dict[str, Any], flags: dict[str, Any]) -> Config:
    """Defaults, overridden by the file, overridden by the flags given on the command line."""
    overrides = {k: v for k, v in flags.items() if v is not None and v != {}}
    flags = dict(flags)
    settings = dict(file_settings)
    policies = dict(settings.pop("failure_policy", {}))
    policies.update(flags.pop("failure_policy", None) or {})
    settings.update({k: v for k, v in flags.items() if v is not None})
    defaults = Limits()
    limits = Limits(int(settings.pop("max_steps", defaults.max_steps)),
                    float(settings.pop("rule_timeout", defaults.timeout)))
    for name in _OFF:
        if settings.get(name) == "off":
            settings[name] = None
    for name in _PATHS:
        if isinstance(settings.get(name), str):
            settings[name] = Path(settings[name])
    known = {f.name for f in fields(Config)}
    unknown = set(settings) - known
    if unknown:  # a bug of ours, not the user's
        raise ConfigError(f"internal: unknown settings {sorted(unknown)}")
    try:
        if "workers" in settings:
            settings["workers"] = parse_workers(settings["workers"])
        return Config(**settings, failure_policy=policies, limits=limits, overrides=overrides)
    except ConfigError as exc:
        raise _in_file_terms(exc, file_settings, overrides) from None


def _in_file_terms(exc: ConfigError, file_settings: Mapping[str, Any], overrides: Mapping[str, Any]) -> ConfigError:
    """Config's checks speak of flags; a value that came from the file is named as the file names it."""
    text = str(exc)
    for name, where in _FILE_NAMES.items():
        flag = "--" + name.replace("_", "-")
        if text.startswith(flag + " ") and name in file_settings and name not in overrides:
            return ConfigError(f"config file {file_settings.get('config_file')}: {where} = {file_settings[name]!r}: "
                               f"{text[len(flag) + 1:].split(' ', 1)[-1]}")
    return exc


#: Config field -> how the config file writes it, e.g. http_max_body -> "[vernemq] max_body"
_FILE_NAMES = {name: (f"[{section}] {key}" if section else key)
               for section, table in FILE_KEYS.items() for key, (name, _) in table.items()}
