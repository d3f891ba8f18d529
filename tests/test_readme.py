"""The README names only what exists: its metric names, its flags, its links, and its first two commands.

A newcomer copies what the README shows. A renamed metric (`hookrules_rule_seconds`, which never existed) or a
flag a subcommand does not take fails them silently, so every name is checked against the code itself: metric
names against what the registries export, flags against the argparse parser the CLI builds, links against the
files and headings they point to. Nothing here is a list kept by hand.
"""

from __future__ import annotations

import argparse
import re
import shlex
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from hookrules import cli, metrics
from hookrules.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: the README's first command: set up and serve the bundled rules
SERVE_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/hookrules serve --rules rules"

FENCE = re.compile(r"^```")
SPAN = re.compile(r"(`+)(.+?)\1")


def _fences(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block, in order."""
    blocks: list[tuple[str, str]] = []
    info: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if FENCE.match(line):
            if info is None:
                info, body = line[3:].strip(), []
            else:
                blocks.append((info, "\n".join(body)))
                info = None
        elif info is not None:
            body.append(line)
    assert info is None, "a code block is not closed"
    return blocks


def _prose(text: str) -> Iterator[str]:
    """The lines outside fenced code blocks."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            yield line


def _spans(text: str) -> list[str]:
    """Every inline code span outside fenced blocks (a span may not cross a line here: none does)."""
    return [m.group(2).strip() for line in _prose(text) for m in SPAN.finditer(line)]


def _code_lines(text: str) -> list[str]:
    """Every logical line of the fenced blocks, a usage line's indented continuation joined to it."""
    lines: list[str] = []
    for _info, body in _fences(text):
        for line in body.splitlines():
            if lines and line.startswith(" ") and line.strip().startswith("["):
                lines[-1] += " " + line.strip()  # `hookrules serve [...]` continued on the next line
            else:
                lines.append(line)
    return lines


# -- the first two commands ----------------------------------------------------------------------------------


def test_readme_begins_with_the_two_commands() -> None:
    """CI runs the README's test command (.ci/run) and a newcomer the one before it: they come first, alone."""
    text = README.read_text()
    blocks = _fences(text)
    ci_command = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert [body for _info, body in blocks[:2]] == [SERVE_COMMAND, ci_command]
    assert [info for info, _body in blocks[:2]] == ["sh", "sh"]
    before = text[: text.index("```")]
    assert before.startswith("# hookrules\n")
    assert "\n    " not in before and "\n\t" not in before, "no other command may come before the two"


# -- metric names --------------------------------------------------------------------------------------------


def _exported_names() -> set[str]:
    """Every sample name a scrape can show: the server's registry (a counter's `_total`, a histogram's
    `_bucket`/`_sum`/`_count`) and the supervisor's own families with --workers."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("", "_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    config = cli.serve_config(cli._parser().parse_args(["serve", "--workers", "2"]))
    names.update(family.name for family in Supervisor(config, []).merged())
    return names


def test_exported_names_are_derived_from_the_code() -> None:
    """The derivation itself: the families of every kind are there (so the next test cannot pass vacuously)."""
    names = _exported_names()
    for name in ("hookrules_decisions_total", "hookrules_rule_duration_seconds_bucket", "hookrules_rules_broken",
                 "hookrules_worker_up", "process_resident_memory_bytes"):
        assert name in names
    assert "hookrules_decisions" not in names  # a counter is only ever scraped with _total


def test_every_metric_the_readme_names_is_exported() -> None:
    text = README.read_text()
    named = set(re.findall(r"(?<![\w])((?:hookrules|process)_[a-z0-9_]*[a-z0-9])", text))
    assert "hookrules_decisions_total" in named  # the pattern finds names at all
    unknown = sorted(named - _exported_names())
    assert not unknown, f"README.md names metrics hookrules does not export: {unknown} (see engine/metrics.py)"



def _labels() -> dict[str, tuple[str, set[str]]]:
    """Exported sample name -> (type, label names), from the metric objects engine/metrics.py declares (every one
    hookrules exports is declared there) and the supervisor's families; with --workers every gauge also has a
    `worker` label."""
    declared: list[tuple[str, str, set[str]]] = []
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            declared.append((obj._name, obj._type, set(obj._labelnames)))
        elif isinstance(obj, (metrics._LoopFamily, metrics.PairsWhenScraped)):
            declared += [(f.name, f.type, set(f._labelnames)) for f in obj.collect()]  # type: ignore[attr-defined]
    for family in metrics.REGISTRY.collect():  # process_* and python_*: their samples show their labels
        if not family.name.startswith("hookrules_"):
            declared.append((family.name, family.type, {k for s in family.samples for k in s.labels}))
    out: dict[str, tuple[str, set[str]]] = {}
    for name, kind, labels in declared:
        if kind == "counter":
            out[name + "_total"] = (kind, labels)
        elif kind == "histogram":
            out.update({name + suffix: (kind, labels) for suffix in ("", "_bucket", "_sum", "_count")})
        else:
            out[name] = (kind, labels | {"worker"})
    config = cli.serve_config(cli._parser().parse_args(["serve", "--workers", "2"]))
    out.update({family.name: (family.type, {"worker"}) for family in Supervisor(config, []).merged()})
    return out


def test_every_label_the_readme_names_is_the_metrics_own() -> None:
    """`name{label="v",other}` in the text, and the metrics table's type and labels columns, match the code."""
    text = README.read_text()
    labels = _labels()
    assert set(labels) == _exported_names()
    wrong: list[str] = []
    for name, inside in re.findall(r"((?:hookrules|process)_[a-z0-9_]+)\{([^}]*)\}", text):
        keys = {re.split(r"[!=~]", item)[0].strip() for item in inside.split(",") if item.strip()}  # =, !=, =~, !~
        if name not in labels or not keys <= labels[name][1]:
            wrong.append(f"{name}{{{inside}}}: its labels are {sorted(labels.get(name, ('', set()))[1])}")
    rows = [line.split("|")[1:4] for line in _prose(text) if re.match(r"\| `hookrules_", line)]
    assert len(rows) >= 10
    for cell, kind, cols in rows:
        name = cell.strip().strip("`")
        row_labels = set(re.findall(r"`(\w+)`", cols))
        if name not in labels or (kind.strip(), row_labels) != (labels[name][0], labels[name][1] - {"worker"}):
            wrong.append(f"metrics table row {name} | {kind.strip()} | {sorted(row_labels)}: the code has "
                         f"{labels.get(name)}")
    assert not wrong, "\n".join(wrong)

# -- flags ---------------------------------------------------------------------------------------------------


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _flags(words: str) -> list[str]:
    """The flags in a command's words: `--x`, `--x=v`, `-q`, and `--[no-]x` as both its forms."""
    found: list[str] = []
    for word in re.split(r"[\s|]+", words):
        word = word.strip("[]")
        match = re.fullmatch(r"(--?)(\[no-\])?([a-z][a-z0-9-]*)(=.*)?", word)
        if match:
            dashes, negation, name, _value = match.groups()
            found.append(dashes + name)
            if negation:
                found.append("--no-" + name)
    return found


def _commands(text: str) -> list[tuple[str, str]]:
    """(subcommand, the words after it) for every `hookrules <word>` in the README's code, each cut at a shell
    separator or comment."""
    found: list[tuple[str, str]] = []
    code = [re.split(r"(?:^|\s)#", line)[0] for line in _code_lines(text)]  # comments are prose
    for piece in code + _spans(text):
        # the word after `hookrules` is a subcommand only if it stands alone (not an image name such as
        # `hookrules localhost/hookrules:1`)
        for match in re.finditer(r"(?<![\w.<-])hookrules ([a-z][a-z-]*)(?=\s|$)(.*)", piece):
            found.append((match.group(1), re.split(r"&&|\|\||;|\s\|\s", match.group(2))[0]))
    return found


def test_every_hookrules_command_in_the_readme_exists_with_its_flags() -> None:
    parsers = _subparsers()
    commands = _commands(README.read_text())
    assert {name for name, _ in commands} >= {"serve", "check", "test", "eval"}
    wrong: list[str] = []
    for name, rest in commands:
        if name not in parsers:
            wrong.append(f"hookrules {name}: no such subcommand (there are {sorted(parsers)})")
            continue
        for flag in _flags(rest):
            if flag not in _options(parsers[name]):
                wrong.append(f"hookrules {name} {flag}: not a flag of '{name}' (see hookrules {name} --help)")
    assert not wrong, "\n".join(wrong)


def test_every_flag_named_alone_is_a_hookrules_flag() -> None:
    """A flag named on its own (`--rule-timeout`) is one of hookrules' own, unless the README shows it as another
    program's (`vmq-admin ... --base64payload=false`)."""
    text = README.read_text()
    ours = set().union(*(_options(p) for p in _subparsers().values()))
    theirs = set()
    for piece in _code_lines(text) + _spans(text):
        words = piece.split()
        if words and not piece.startswith("-") and not re.search(r"(?<![\w.-])hookrules ", piece):
            theirs.update(_flags(piece))
    alone = [flag for span in _spans(text) if span.startswith("--") for flag in _flags(span)[:1]]
    assert "--rule-timeout" in alone
    unknown = sorted({flag for flag in alone if flag not in ours and flag not in theirs})
    assert not unknown, f"README.md names flags no hookrules subcommand takes: {unknown}"


def test_flag_table_lists_every_serve_flag() -> None:
    """The serve flag table documents every flag serve takes (hidden ones aside), and nothing else."""
    text = README.read_text()
    serve = _subparsers()["serve"]
    documented = {flag for line in _prose(text) if line.startswith("| `--")
                  for cell in [line.split("|")[1]] for flag in _flags(cell.replace("`", " ").replace(",", " "))}
    visible = {option for action in serve._actions if action.help != argparse.SUPPRESS
               for option in action.option_strings if option.startswith("--") and not option.startswith("--no-")}
    assert documented == visible - {"--help"}



def test_usage_block_shows_every_flag_of_every_subcommand() -> None:
    """The usage block under Running shows each subcommand with all the flags it takes (--help aside)."""
    usage = next(body for _info, body in _fences(README.read_text()) if body.startswith("hookrules serve"))
    shown: dict[str, set[str]] = {}
    for name, rest in _commands("```\n" + usage + "\n```"):
        shown.setdefault(name, set()).update(_flags(rest))
    missing = {name: [action.option_strings[-1] for action in parser._actions
                      if action.option_strings and action.help != argparse.SUPPRESS
                      and not isinstance(action, argparse._HelpAction)
                      and not set(action.option_strings) & shown.get(name, set())]
               for name, parser in _subparsers().items()}
    assert not any(missing.values()), f"flags missing from the usage block: {missing}"

# -- links ---------------------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text without markup, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(path.read_text()):
        match = re.match(r"#{1,6} (.+?)#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_slug_is_githubs() -> None:
    assert _slug("Shared libraries: load()") == "shared-libraries-load"
    assert _slug("TOPICS: which messages a `message.*` rule sees") == "topics-which-messages-a-message-rule-sees"
    assert _slug("Portable rules: one file for every broker") == "portable-rules-one-file-for-every-broker"


def _markdown_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules", ".mypy_cache", ".pytest_cache"}
    return sorted(p for p in ROOT.rglob("*.md") if not skip & set(p.relative_to(ROOT).parts))


def _links(path: Path) -> Iterator[str]:
    for line in _prose(path.read_text()):
        line = SPAN.sub("", line)
        yield from re.findall(r"\]\(([^)\s]+)\)", line)


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    """In the README and every other Markdown file of the repository (the examples link into the README's
    sections): a relative link names a file that exists, and its #anchor a heading of that file."""
    broken: list[str] = []
    for link in _links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):
            continue  # http:, https:, mailto:
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{link}: no heading with the anchor #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_links_are_found() -> None:
    links = list(_links(README))
    assert "#rabbitmq-setup" in links and any(link.startswith("bench/") for link in links)


# -- paths ---------------------------------------------------------------------------------------------------


def test_every_repository_path_the_readme_names_exists() -> None:
    """`engine/...`, `bench/x.py`, `tests/...`, `examples/...`, `deploy/...` in code spans and blocks name files
    of this repository; `rules/...` does not (it is the reader's own rules directory)."""
    text = README.read_text()
    pattern = re.compile(r"(?<![\w/.-])((?:engine|bench|tests|examples|protos|deploy|\.ci)/[\w./-]*[\w/])")
    named = {m.group(1) for piece in _code_lines(text) + _spans(text) for m in pattern.finditer(piece)}
    assert "tests/test_layering.py" in named
    missing = sorted(p for p in named if "<" not in p and not (ROOT / p).exists())
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_code_layout_names_every_engine_module() -> None:
    """The Development section's tree names each module of engine/ (so a contributor finds it) and no other."""
    text = README.read_text()
    tree = next(body for _info, body in _fences(text) if body.startswith("engine/"))
    named = set(re.findall(r"\b(\w+\.py)\b", tree))
    modules = {p.name for p in (ROOT / "engine").rglob("*.py")
               if not p.name.startswith("__") and "__pycache__" not in p.parts}
    generated = {p.name for p in (ROOT / "engine").rglob("*_pb2*.py")}
    assert named - modules == set(), "the tree names modules that do not exist"
    assert modules - generated - named == set(), "modules missing from the README's tree (Development)"


def test_shlex_reads_the_commands() -> None:
    """The quickstart's commands are shell a newcomer can paste: each parses."""
    for info, body in _fences(README.read_text()):
        if info == "sh":
            for line in body.splitlines():
                shlex.split(line, comments=True)


# -- contents ------------------------------------------------------------------------------------------------


def test_contents_lists_every_section_and_example() -> None:
    """The Contents list links every section (## and ###) of the README, and every example pack in examples/."""
    text = README.read_text()
    start = text.index("## Contents\n")
    contents = text[start: text.index("\n## ", start + 1)]
    linked = set(re.findall(r"\]\(#([^)]+)\)", contents))
    headings = {_slug(m.group(1)) for line in _prose(text) for m in [re.match(r"#{2,3} (.+)$", line)] if m}
    assert not headings - {"contents"} - linked, "sections missing from the Contents"
    packs = {p.name for p in (ROOT / "examples").iterdir() if p.is_dir()}
    listed = set(re.findall(r"\]\(examples/([^/)]+)/\)", contents))
    assert packs and listed == packs, "example packs missing from the Contents"


# -- the config file -----------------------------------------------------------------------------------------


def test_config_file_example_is_read_and_complete(tmp_path: Path) -> None:
    """The README's hookrules.toml is a file hookrules reads (no stale key: an unknown one is refused at start),
    and it shows every key the reader takes."""
    from hookrules.config import FILE_KEYS, read_config_file

    example = next(body for info, body in _fences(README.read_text()) if info == "toml")
    path = tmp_path / "hookrules.toml"
    path.write_text(example)
    settings = read_config_file(path)  # raises ConfigError naming a key it does not know
    fields = {name for table in FILE_KEYS.values() for name, _kind in table.values()}
    assert fields - set(settings) == set(), "settings missing from the README's config file example"
    assert settings["failure_policy"]


# -- hooks and helpers ---------------------------------------------------------------------------------------


def _table(text: str, header: str) -> list[list[str]]:
    """The body rows of the table whose header line starts with `header`, as lists of stripped cells."""
    lines = list(_prose(text))
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows: list[list[str]] = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _words(cell: str) -> set[str]:
    """`allow (with `tags=[...]`), deny, ignore` -> {allow, deny, ignore}: the cell's plain words."""
    return set(re.findall(r"\b[a-z_]+\b", re.sub(r"`[^`]*`|\([^)]*\)", "", cell)))


@pytest.mark.parametrize("broker, header", [
    ("emqx", "| hook | also reads | may decide | failure policy |"),
    ("vernemq", "| hook | also reads | may decide | rewrite() takes |"),
    ("rabbitmq", "| hook (file) | path |"),
], ids=["emqx", "vernemq", "rabbitmq"])
def test_hook_tables_match_the_hooks(broker: str, header: str) -> None:
    """Each broker's hook table lists exactly that broker's hooks, with the decisions each may make and (EMQX,
    VerneMQ) its failure policy, as engine/hooks.py declares them."""
    from hookrules.hooks import HOOKS

    rows = _table(README.read_text(), header)
    listed: set[str] = set()
    wrong: list[str] = []
    for row in rows:
        for name in re.findall(r"`([^`]+)`", row[0]):
            listed.add(name)
            info = HOOKS.get(name)
            if info is None:
                wrong.append(f"{name}: no such hook")
                continue
            decides = _words(row[3] if broker == "rabbitmq" else row[2])
            if decides != set(info.decisions):
                wrong.append(f"{name} may decide {sorted(info.decisions)}, not {sorted(decides)}")
            if broker != "rabbitmq" and row[-1] != info.failure_policy:
                wrong.append(f"{name}'s failure policy is {info.failure_policy}, not {row[-1]}")
    expected = {name for name, info in HOOKS.items() if info.broker == broker}
    assert listed == expected, f"hooks missing from or extra in the {broker} table"
    assert not wrong, "\n".join(wrong)


def test_helpers_table_and_builtins_are_the_rules_own() -> None:
    """The helpers table names every helper (and only those) with parameter names a rule can pass, and the
    Builtins line every builtin."""
    import inspect

    from hookrules.lang.builtins import HELPERS, SAFE_BUILTINS

    text = README.read_text()
    rows = _table(text, "| helper |")
    wrong: list[str] = []
    named: set[str] = set()
    for call, params in (m for row in rows for m in re.findall(r"`(\w+)\(([^)]*)\)`", row[0])):
        named.add(call)
        if call in HELPERS:
            takes = set(inspect.signature(HELPERS[call]).parameters)
            wrong += [f"{call}({key}=)" for key in re.findall(r"(\w+)=", params) if key not in takes]
    assert named == set(HELPERS) | {"log"}, "helpers missing from or extra in the helpers table"
    line = next(line for line in _prose(text) if line.startswith("Builtins: `"))
    builtins = text[text.index(line) + len("Builtins: `"):]
    assert set(builtins[: builtins.index("`")].split()) == set(SAFE_BUILTINS)
    assert not wrong, f"parameters the helpers do not take: {wrong}"
