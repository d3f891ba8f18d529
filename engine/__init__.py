"""hookrules: EMQX ExHook and VerneMQ webhooks answered by hot-reloaded, sandboxed rule files."""

from .decisions import Allow, Decision, Deny, Drop, Ignore, Rewrite
from .engine import Engine, Outcome
from .errors import Location, RuleError, RuleLoadError
from .events import Client, Conn, Event, Message, SubOpts, TopicFilter
from .ruleset import CompiledRule, Limits, RuleSet, compile_rule, scan

__version__ = "0.1.0"

__all__ = [
    "Allow", "Client", "CompiledRule", "Conn", "Decision", "Deny", "Drop", "Engine", "Event", "Ignore", "Limits",
    "Location", "Message", "Outcome", "Rewrite", "RuleError", "RuleLoadError", "RuleSet", "SubOpts", "TopicFilter",
    "__version__", "compile_rule", "scan",
]
