"""The architecture as a test: adapters -> engine -> lang, never the other way, and asteval only in lang/interp."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"
LEAVES = {"errors", "events", "hooks", "decisions", "modifiers", "emqxoptions", "records"}
BROKER_LIBS = {"grpc", "aiohttp", "google"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ENGINE).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__") or "__init__"


def _imports(path: Path) -> set[str]:
    """Absolute names this module imports: 'hookrules.x.y' for our own, the top package for others."""
    module = _module_name(path)
    package = module.split(".")[:-1] if not path.name == "__init__.py" else module.split(".")
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                prefix = ".".join(["hookrules", *base] + ([node.module] if node.module else []))
                if node.module:
                    out.add(prefix)
                else:
                    out.update(f"{prefix}.{a.name}" for a in node.names)
            else:
                out.add(node.module or "")
    return out


MODULES = {_module_name(p): _imports(p) for p in ENGINE.rglob("*.py")}


def _ours(imports: set[str]) -> set[str]:
    return {i.removeprefix("hookrules.") for i in imports if i.startswith("hookrules.")}


def _third_party(imports: set[str]) -> set[str]:
    return {i.split(".")[0] for i in imports if not i.startswith("hookrules")} - set(sys.stdlib_module_names) - {"__future__"}


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_use_only_the_standard_library(leaf: str) -> None:
    imports = MODULES[leaf]
    assert _third_party(imports) == set()
    assert _ours(imports) <= LEAVES


def test_only_lang_interp_imports_asteval() -> None:
    users = {m for m, imports in MODULES.items() if "asteval" in _third_party(imports)}
    assert users == {"lang.interp"}


@pytest.mark.parametrize("module", ["engine", "ruleset", "reload", "lang.checker", "lang.interp", "lang.builtins"])
def test_the_engine_knows_no_broker(module: str) -> None:
    imports = MODULES[module]
    assert not _third_party(imports) & BROKER_LIBS
    assert not {i for i in _ours(imports) if i.split(".")[0] in {"adapters", "server", "cli", "config"}}


#: each broker's front-end and the module it may lean on
ADAPTER_FAMILIES = {"adapters.exhook": {"adapters.exhook_proto", "adapters.admission"}, "adapters.exhook_proto": set(),
                    "adapters.webhooks": {"adapters.vernemq", "adapters.admission", "adapters.jsonwire",
                                          "adapters.httpbody", "adapters.httpwire", "adapters.httpreply"},
                    "adapters.vernemq": {"adapters.refusal"}, "adapters.jsonwire": set(),
                    # the two front-ends of the --http port share how they read a body and refuse a call
                    "adapters.httpbody": {"adapters.refusal"}, "adapters.refusal": set(),
                    "adapters.admission": set(),
                    # the --http port's protocol, under both of its front-ends
                    "adapters.httpwire": {"adapters.admission", "adapters.httpbody", "adapters.refusal",
                                          "adapters.httpreply", "adapters.httpaccept"},
                    "adapters.httpaccept": set(),
                    "adapters.httpreply": set(),
                    "adapters.rabbitmq_http": {"adapters.rabbitmq", "adapters.admission", "adapters.httpbody",
                                               "adapters.httpwire", "adapters.httpreply"},
                    "adapters.rabbitmq": {"adapters.refusal"},
                    # EMQX's HTTP authn/authz: mapping, the plain-value service, and the --http port's glue
                    "adapters.emqx_http": {"adapters.refusal", "adapters.jsonwire"},
                    "adapters.emqx_http_service": {"adapters.emqx_http", "adapters.jsonwire"},
                    "adapters.emqx_http_route": {"adapters.emqx_http", "adapters.emqx_http_service", "adapters.httpbody",
                                                 "adapters.refusal", "adapters.httpwire", "adapters.httpreply"},
                    "adapters.raw": {"adapters.exhook", "adapters.exhook_proto", "adapters.vernemq", "adapters.rabbitmq",
                                     "adapters.emqx_http"}}


def test_adapters_never_reach_into_the_language_or_each_other() -> None:
    adapters = {m for m in MODULES if m.startswith("adapters.") and m != "adapters.__init__"}
    assert adapters == set(ADAPTER_FAMILIES)
    for module in adapters:
        ours = _ours(MODULES[module])
        assert not {i for i in ours if i.startswith("lang")}, module
        assert {i for i in ours if i.startswith("adapters.")} <= ADAPTER_FAMILIES[module], module


def test_the_walk_found_the_package() -> None:
    assert {"engine", "ruleset", "adapters.exhook", "lang.interp", "server", "cli"} <= set(MODULES)
