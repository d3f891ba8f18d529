"""The hookrules command: serve, check, test, eval, hooks and replay. It parses arguments, builds a Config, calls one function."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import (
    DEFAULT_GRPC,
    DEFAULT_HTTP,
    DEFAULT_MAX_BODY,
    DEFAULT_METRICS,
    LOG_LEVELS,
    Config,
    ConfigError,
    build_config,
    check_timeouts,
    parse_policy,
    read_config_file,
    watchdog_limit,
)
from .lang.builtins import RULE_LOGGER, unlimited_log
from .hooks import Policy
from .ruleset import Limits

if TYPE_CHECKING:
    from .watchdog import RunClock


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hookrules", description="Policy for MQTT brokers, from rule files.")
    parser.add_argument("--version", action="version", version=f"hookrules {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="answer EMQX ExHook and HTTP auth calls, VerneMQ webhooks and RabbitMQ's "
                                         "HTTP auth checks from the rules directory")
    # Every serve flag defaults to None, "not given", so a config file's value stands unless a flag says otherwise.
    serve.add_argument("--config", type=Path, metavar="FILE", help="a TOML file with any of the settings below")
    serve.add_argument("--rules", type=Path, help="rules directory (default: rules)")
    serve.add_argument("--grpc", metavar="HOST:PORT",
                       help=f"EMQX ExHook gRPC address (default: {DEFAULT_GRPC}; port 0 picks a free port; 'off')")
    serve.add_argument("--http", metavar="HOST:PORT",
                       help=f"HTTP address of VerneMQ webhooks, RabbitMQ's /rabbitmq/ and EMQX's /emqx/ checks (default: "
                            f"{DEFAULT_HTTP}; port 0 picks a free port; 'off')")
    serve.add_argument("--vernemq-base64", choices=("on", "off"),
                       help="whether VerneMQ sends payloads base64-encoded, as its base64encode setting "
                            "(default: on; an endpoint URL may override it with ?base64=off)")
    serve.add_argument("--http-max-body", type=int, metavar="BYTES",
                       help=f"largest webhook body accepted (default: {DEFAULT_MAX_BODY})")
    serve.add_argument("--metrics", metavar="HOST:PORT",
                       help=f"Prometheus /metrics, /healthz and /readyz address (default: {DEFAULT_METRICS}; 'off')")
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="default: info")
    serve.add_argument("--failure-policy", action="append", default=[], metavar="HOOK=POLICY",
                       help="what a failing rule answers: deny, ignore or allow (repeatable; "
                            "default deny for client.authenticate/authorize, VerneMQ auth_*, RabbitMQ's checks "
                            "and the portable authenticate/authorize, else ignore)")
    serve.add_argument("--max-steps", type=int, help=f"evaluation steps per rule run (default: {Limits().max_steps})")
    serve.add_argument("--rule-timeout", type=float,
                       help=f"seconds one rule run may take (default: {Limits().timeout})")
    serve.add_argument("--max-concurrent-calls", type=int,
                       help="calls in progress at once before more are refused (default: 1000)")
    serve.add_argument("--hard-timeout", type=float, metavar="SECONDS",
                       help="seconds one rule run may hold the server before a watchdog process kills it for its "
                            "supervisor to restart (default: 5; 0: no watchdog)")
    serve.add_argument("--grace-period", type=float, metavar="SECONDS",
                       help="seconds calls in flight get to finish after SIGTERM (default: 5)")
    serve.add_argument("--decision-log", metavar="stdout|FILE|off",
                       help="write one JSON line per rule decision to stdout or a file (default: off)")
    serve.add_argument("--decision-log-sample", type=float, metavar="RATE",
                       help="share of decisions logged, above 0 and at most 1 (default: 1)")
    serve.add_argument("--decision-log-secrets", action=argparse.BooleanOptionalAction,
                       help="include passwords and payloads (base64) in the decision log: only where that log is safe")
    serve.add_argument("--shadow", metavar="DIR",
                       help="a second rules directory, run beside the live one after each answer is sent, to see what "
                            "it would decide (hookrules_shadow_decisions_total, and its disagreements in the decision "
                            "log); 'off' undoes a config file's")
    serve.add_argument("--shadow-sample", type=float, metavar="RATE",
                       help="share of calls the shadow rules run on, above 0 and at most 1 (default: 0.1)")
    serve.add_argument("--shadow-rule-timeout", type=float, metavar="SECONDS",
                       help="seconds one shadow rule run may take (default: --rule-timeout's)")
    serve.add_argument("--shadow-max-steps", type=int, help="evaluation steps per shadow rule run (default: --max-steps')")
    serve.add_argument("--polling", action=argparse.BooleanOptionalAction,
                       help="poll the rules directory instead of inotify (NFS, some container mounts)")
    serve.add_argument("--workers", metavar="N|auto",
                       help="worker processes sharing the ports, supervised by this one (default: 1; auto: one "
                            "per CPU available)")
    # set by the supervisor for its workers only (a name no one types for --workers by mistake)
    serve.add_argument("--supervised-worker", dest="worker", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve gRPC and HTTP over TLS with this certificate")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    serve.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                       help="require client certificates signed by this CA (mTLS)")

    check = sub.add_parser("check", help="load every rule file as the server would and report problems")
    _rules_args(check)
    check.add_argument("--format", choices=("text", "json"), default="text",
                       help="json: one object with every problem's file, line and col, for editors and CI")

    test = sub.add_parser("test", help="run the table tests in RULES/tests/*.yaml")
    _rules_args(test)
    test.add_argument("--config", type=Path, metavar="FILE",
                      help="serve's TOML config file: test with the failure policies and limits you deploy "
                           "(and its rules directory, unless one is given); flags given here win")
    test.add_argument("--format", choices=("text", "json", "junit"), default="text",
                      help="json, or junit (JUnit XML) for a CI system's test report; --coverage then goes to stderr")
    test.add_argument("--coverage", action="store_true", help="report which statement lines the tests ran")
    test.add_argument("-q", "--quiet", action="store_true", help="list only failing cases")
    _limit_args(test, "test")

    rep = sub.add_parser("replay", help="decide the events of a decision log again with other rules, and say "
                                        "what would change (exit 1 if anything would)")
    rep.add_argument("log", type=Path, metavar="LOG", help="a decision log file (serve --decision-log FILE)")
    rep.add_argument("--rules", dest="rules_flag", type=Path, metavar="RULES",
                     help="the rules directory to replay against (default: rules)")
    rep.add_argument("--config", type=Path, metavar="FILE",
                     help="serve's TOML config file: replay with the failure policies and limits you deploy (and its "
                          "rules directory, unless --rules is given); flags given here win")
    rep.add_argument("--show", type=int, default=10, metavar="N", help="list the first N events that differ (default: 10)")
    rep.add_argument("--format", choices=("text", "json"), default="text")
    _limit_args(rep, "replay")

    hooks = sub.add_parser("hooks", help="list the hooks, or say what one hook's rule reads and may decide")
    hooks.add_argument("hook", nargs="?", help="e.g. client.authenticate, auth_on_publish, rabbitmq.topic, authorize")
    hooks.add_argument("--broker", help="only this broker's hooks: emqx, vernemq, rabbitmq or portable")
    hooks.add_argument("--format", choices=("text", "json"), default="text")

    ev = sub.add_parser("eval", help="run one event through the rules and print the decision")
    ev.add_argument("hook", help="the broker hook, e.g. client.authenticate, auth_on_register or rabbitmq.user "
                                 "(its own file answers, else a portable authenticate.star/authorize.star)")
    ev.add_argument("--event", required=True, metavar="FILE_OR_JSON",
                    help='the event: JSON, e.g. \'{"client": {"username": "u"}}\', or a JSON/YAML file')
    ev.add_argument("--rules", type=Path, default=Path("rules"), help="rules directory (default: rules)")
    ev.add_argument("--broker", choices=("emqx", "vernemq", "rabbitmq"), help="check the hook belongs to this broker")
    ev.add_argument("--explain", action="store_true", help="show the lines that ran and what the conditions saw")
    ev.add_argument("--raw", action="store_true",
                    help="the event as the broker sends it: a VerneMQ webhook body, an EMQX request in "
                         "protobuf JSON (the v3 proto's field names), or a RabbitMQ check's fields as a JSON object")
    ev.add_argument("--channel", choices=("exhook", "http"),
                    help="with --raw and an EMQX hook: exhook (protobuf JSON, the default) or http (the JSON "
                         "object EMQX's HTTP authenticator or authorizer posts, its fields named as in the README)")
    ev.add_argument("--vernemq-base64", choices=("on", "off"), default="on",
                    help="with --raw: whether the body's payloads are base64 (VerneMQ's base64encode; default on)")
    return parser


def _limit_args(command: argparse.ArgumentParser, what: str) -> None:
    """The failure policies and limits rules run under, as serve takes them (test, replay)."""
    command.add_argument("--failure-policy", action="append", default=[], metavar="HOOK=POLICY",
                         help=f"as for serve: {what} with the policy you deploy")
    command.add_argument("--rule-timeout", type=float, help=f"as for serve (default: {Limits().timeout:g})")
    command.add_argument("--max-steps", type=int, help=f"as for serve (default: {Limits().max_steps})")
    command.add_argument("--hard-timeout", type=float, default=None, metavar="SECONDS",
                         help="as for serve: a rule step stuck this long ends the run (default: 5, or twice "
                              "--rule-timeout; 0: never)")


def _rules_args(command: argparse.ArgumentParser) -> None:
    """`--rules DIR`, as serve and eval take it; the older positional RULES still works."""
    command.add_argument("--rules", dest="rules_flag", type=Path, metavar="RULES",
                         help="rules directory (default: rules)")
    command.add_argument("rules", type=Path, nargs="?", help=argparse.SUPPRESS)


def _rules_dir(args: argparse.Namespace, configured: Path | None = None) -> Path | None:
    """The directory --rules or the positional names (both: they must agree), else the config's, else rules/."""
    flag, positional = args.rules_flag, args.rules
    if flag is not None and positional is not None and flag != positional:
        print(f"hookrules: error: two rules directories given ({positional} and --rules {flag}): give one",
              file=sys.stderr)
        return None
    chosen = flag or positional or configured or Path("rules")
    if not chosen.is_dir():
        print(f"hookrules: error: {chosen} is not a directory", file=sys.stderr)
        return None
    return chosen


def serve_config(args: argparse.Namespace) -> Config:
    """The Config for `serve`: defaults, then --config's file, then the flags given."""
    flags = {
        "rules": args.rules, "grpc": args.grpc, "http": args.http, "metrics": args.metrics,
        "vernemq_base64": None if args.vernemq_base64 is None else args.vernemq_base64 == "on",
        "http_max_body": args.http_max_body, "log_level": args.log_level, "polling": args.polling,
        "max_steps": args.max_steps, "rule_timeout": args.rule_timeout,
        "max_concurrent_calls": args.max_concurrent_calls, "decision_log": args.decision_log,
        "hard_timeout": args.hard_timeout, "grace_period": args.grace_period,
        "decision_log_sample": args.decision_log_sample, "decision_log_secrets": args.decision_log_secrets,
        "tls_cert": args.tls_cert, "tls_key": args.tls_key, "tls_client_ca": args.tls_client_ca,
        "workers": args.workers, "worker": args.worker, "shadow": args.shadow, "shadow_sample": args.shadow_sample,
        "shadow_rule_timeout": args.shadow_rule_timeout, "shadow_max_steps": args.shadow_max_steps,
        "failure_policy": dict(parse_policy(p) for p in args.failure_policy),
    }
    file_settings = read_config_file(args.config) if args.config is not None else {}
    return build_config(file_settings, flags)


def _serve(args: argparse.Namespace) -> int:
    from .server import run  # grpc is imported only when serving

    try:
        config = serve_config(args)
    except ConfigError as exc:
        print(f"hookrules: error: {exc}", file=sys.stderr)
        return 2
    from .logsink import NonBlockingHandler  # a stderr nobody reads must not block the server

    handler = NonBlockingHandler(sys.stderr.fileno())
    who = f" [worker {config.worker}]" if config.worker else ""  # the workers share the supervisor's stderr
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s{who} %(name)s: %(message)s"))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    if config.workers > 1 and not config.worker:
        from .supervisor import supervise

        return supervise(config, args.argv)
    return run(config)


def _check(args: argparse.Namespace) -> int:
    from .checkdir import check_directory

    rules = _rules_dir(args)
    if rules is None:
        return 2
    return check_directory(rules, sys.stdout, sys.stderr, args.format)


def _deployed(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Policy], Limits, float | None] | None:
    """--config's settings, failure policies, limits and hard timeout, with the flags given winning;
    None (and a message) when they are wrong."""
    try:
        deployed = read_config_file(args.config) if args.config is not None else {}
        policies = dict(deployed.get("failure_policy", {}))
        policies.update(parse_policy(p) for p in args.failure_policy)
        defaults = Limits()
        rule_timeout = float(_given(args.rule_timeout, deployed.get("rule_timeout"), defaults.timeout))
        max_steps = int(_given(args.max_steps, deployed.get("max_steps"), defaults.max_steps))
        hard_timeout = _given(args.hard_timeout, deployed.get("hard_timeout"), None)
        check_timeouts(rule_timeout, hard_timeout)
        if max_steps < 1:
            raise ConfigError("rule limits must be positive (--max-steps, --rule-timeout)")
        return deployed, policies, Limits(max_steps, rule_timeout), hard_timeout
    except (ConfigError, ValueError) as exc:
        print(f"hookrules: error: {exc}", file=sys.stderr)
        return None


def _test(args: argparse.Namespace) -> int:
    from .tester import run_tests

    # rule errors are reported in each failing case's diff; a case may expect one, so no log lines
    logging.basicConfig(level="CRITICAL", format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    settings = _deployed(args)
    if settings is None:
        return 2
    deployed, policies, limits, hard_timeout = settings
    rules = _rules_dir(args, deployed.get("rules"))
    if rules is None:
        return 2
    with _watchdog(hard_timeout, limits, "this test run") as clock:
        return run_tests(rules, sys.stdout, coverage=args.coverage, verbose=not args.quiet, policies=policies,
                         limits=limits, run_clock=clock, fmt=args.format, err=sys.stderr)


def _replay(args: argparse.Namespace) -> int:
    from .replay import ReplayError, replay, write_json, write_text

    # each run that fails is counted and shown with its difference; the engine's own lines would repeat it
    logging.basicConfig(level="CRITICAL", format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    settings = _deployed(args)
    if settings is None:
        return 2
    deployed, policies, limits, hard_timeout = settings
    if args.show < 0:
        print(f"hookrules: error: --show {args.show} must be 0 or more", file=sys.stderr)
        return 2
    args.rules = None  # replay takes the rules directory as --rules only: its positional is the log
    rules = _rules_dir(args, deployed.get("rules"))
    if rules is None:
        return 2
    with _watchdog(hard_timeout, limits, "this replay") as clock:
        try:
            report = replay(args.log, rules, policies=policies, limits=limits, run_clock=clock, show=args.show)
        except ReplayError as exc:
            print(f"hookrules: error: {exc}", file=sys.stderr)
            return 2
    if args.format == "json":
        write_json(report, sys.stdout)
    else:
        write_text(report, sys.stdout, args.show)
    return 1 if report.differ else 0


def _given(flag: Any, configured: Any, default: Any) -> Any:
    return flag if flag is not None else configured if configured is not None else default


def _hooks(args: argparse.Namespace) -> int:
    from .hooklist import print_hooks

    return print_hooks(sys.stdout, args.hook, args.broker, args.format)


def _eval(args: argparse.Namespace) -> int:
    from .eventspec import SpecError
    from .explain import evaluate, read_event

    if not args.rules.is_dir():  # a mistyped --rules must not look like an answer ("no rule: ignore")
        print(f"hookrules: error: {args.rules} is not a directory", file=sys.stderr)
        return 2
    logging.basicConfig(level="ERROR", format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger(RULE_LOGGER).setLevel(logging.INFO)  # what the rule's log() calls say
    logging.getLogger("hookrules.engine").setLevel(logging.CRITICAL)  # its rule errors are printed below
    try:
        spec = read_event(args.event)
    except SpecError as exc:
        print(f"hookrules: error: {exc}", file=sys.stderr)
        return 2
    events = None
    if args.raw:
        from .adapters.raw import RawEventError, raw_events  # the adapters read what brokers send

        try:
            if not isinstance(spec, dict):
                raise RawEventError("the event is a JSON object, as the broker sends it")
            events = raw_events(args.hook, json.dumps(spec), vernemq_base64=args.vernemq_base64 == "on",
                                channel=args.channel)
        except (RawEventError, TypeError, ValueError) as exc:  # TypeError: a YAML date is no JSON
            print(f"hookrules: error: --raw: {exc}", file=sys.stderr)
            return 2
        if not events:
            print("hookrules: error: --raw: the body asks about no topic, so no rule runs", file=sys.stderr)
            return 2
    with _watchdog(None, Limits(), "this eval") as clock, unlimited_log():
        return evaluate(args.rules, args.hook, spec, sys.stdout, broker=args.broker, explain=args.explain,
                        run_clock=clock, events=events)


@contextlib.contextmanager
def _watchdog(hard_timeout: float | None, limits: Limits, what: str) -> Iterator[RunClock | None]:
    """A watchdog process for the CLI's rule runs, as `serve` has (see watchdog.py)."""
    limit = watchdog_limit(hard_timeout, limits.timeout)
    if not limit:
        yield None
        return
    from .watchdog import Watchdog

    try:
        dog = Watchdog(limit, what)
    except OSError as exc:  # as serve does: run on without one, and say so
        print(f"hookrules: warning: watchdog: cannot start ({exc}); running without it", file=sys.stderr)
        yield None
        return
    try:
        yield dog.clock
    finally:
        dog.stop()


COMMANDS = {"serve": _serve, "check": _check, "test": _test, "eval": _eval, "hooks": _hooks, "replay": _replay}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a supervisor passes on to its workers
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `hookrules eval ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
