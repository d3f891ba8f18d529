"""The static check of rule files: what a rule may not contain, and how each refusal is reported.

Every refusal is a RuleLoadError whose errors carry a code, file:line:col (1-based, col in characters)
and a hint saying what to write instead. All in process: compile_rule only, no server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hookrules.errors import RuleError, RuleLoadError
from hookrules.hooks import HOOKS, hook_for_file
from hookrules.lang.checker import MAX_DEPTH, MAX_SOURCE_BYTES
from hookrules.ruleset import CompiledRule, RuleSet, compile_rule, scan

from .rule_helpers import AUTHN, AUTHZ, PUBLISH, compile_src, rule_path
from .support import BUNDLED_RULES


def load_errors(src: str | bytes, hook: str = AUTHZ) -> list[RuleError]:
    with pytest.raises(RuleLoadError) as info:
        compile_src(src, hook)
    errors = info.value.errors
    assert errors, "a RuleLoadError must carry at least one error"
    for err in errors:
        assert err.location.file == rule_path(hook)
    return errors


def only_error(src: str | bytes, hook: str = AUTHZ) -> RuleError:
    errors = load_errors(src, hook)
    assert len(errors) == 1, [e.one_line() for e in errors]
    return errors[0]


def assert_error(err: RuleError, code: str, line: int, col: int, message: str, hint: str) -> None:
    assert err.code == code, err.one_line()
    assert (err.location.line, err.location.col) == (line, col), err.one_line()
    assert message in err.message, err.one_line()
    assert err.hint, f"no hint: {err.one_line()}"
    assert hint in err.hint, err.one_line()


# -- refused constructs -------------------------------------------------------------------------

# (id, source, hook, line, col, in the message, in the hint)
REFUSED = [
    ("while", "if True:\n    while True:\n        pass\n", AUTHZ, 2, 5, "'while' is not allowed", "for x in"),
    ("import", "x = 1\nimport os\n", AUTHZ, 2, 1, "'import' is not allowed", "need no import"),
    ("from-import", "x = 1\nif x:\n    from os import path\n", AUTHZ, 3, 5, "'import' is not allowed", "need no import"),
    ("class", "x = 1\nclass A:\n    pass\n", AUTHZ, 2, 1, "'class' is not allowed", "def"),
    ("global", "def f():\n    global x\n", AUTHZ, 2, 5, "'global' is not allowed", "return a value"),
    ("nonlocal", "def f():\n    y = 1\n    def g():\n        nonlocal y\n", AUTHZ, 4, 9, "'nonlocal' is not allowed",
     "return a value"),
    ("try", "x = 1\ntry:\n    pass\nexcept Exception:\n    pass\n", AUTHZ, 2, 1, "'try' is not allowed", "failure policy"),
    ("raise", "if client.username:\n    raise ValueError('x')\n", AUTHZ, 2, 5, "'raise' is not allowed", "deny(reason)"),
    ("with", "with client:\n    pass\n", AUTHZ, 1, 1, "'with' is not allowed", "no resources"),
    ("lambda", "f = lambda: 1\n", AUTHZ, 1, 5, "'lambda' is not allowed", "def"),
    ("del", "x = 1\ndel x\n", AUTHZ, 2, 1, "'del' is not allowed", "read-only"),
    ("assert", "assert client.username\n", AUTHZ, 1, 1, "'assert' is not allowed", "deny(reason)"),
    ("generator-expression", "x = list(i for i in range(3))\n", AUTHZ, 1, 9, "generator expressions are not allowed",
     "list comprehension"),
    ("walrus", "if (n := 1):\n    pass\n", AUTHZ, 1, 5, "':=' is not allowed", "line of its own"),
    ("star-args", "x = [1]\ny = max(*x)\n", AUTHZ, 2, 9, "'*' unpacking is not allowed", "one by one"),
    ("double-star-kwargs", "d = {}\ne = dict(**d)\n", AUTHZ, 2, 12, "'**' unpacking is not allowed", "one by one"),
    ("dunder-attribute", "x = client.__class__\n", AUTHZ, 1, 5, "attribute '__class__' starts with '_'", "public data"),
    ("underscore-attribute", "x = client.username._y\n", AUTHZ, 1, 5, "attribute '_y' starts with '_'", "public data"),
    ("underscore-name", "_x = 1\n", AUTHZ, 1, 1, "name '_x' starts with '_'", "without the leading underscore"),
    ("underscore-name-read", "x = 1\ny = x + _q\n", AUTHZ, 2, 9, "name '_q' starts with '_'",
     "without the leading underscore"),
    ("str.format", "x = 1\ny = '{}'.format(x)\n", AUTHZ, 2, 5, "attribute 'format' is not allowed", "f-strings"),
    ("str.format_map", "y = '{a}'.format_map({})\n", AUTHZ, 1, 5, "attribute 'format_map' is not allowed", "f-strings"),
    ("str.ljust", "y = 'x'.ljust(100)\n", AUTHZ, 1, 5, "attribute 'ljust' is not allowed", "pad with +"),
    ("str.zfill", "y = 'x'.zfill(100)\n", AUTHZ, 1, 5, "attribute 'zfill' is not allowed", "pad with +"),
    ("frame-attribute", "y = client.f_locals\n", AUTHZ, 1, 5, "attribute 'f_locals' is not allowed", "functions or frames"),
    ("mro", "y = dict.mro\n", AUTHZ, 1, 5, "attribute 'mro' is not allowed", "inspect types"),
    # mistakes that would fail every run
    ("misspelt-event-field", "if client.usernam == 'x':\n    pass\n", AUTHZ, 1, 4, "'client' has no field 'usernam'",
     "did you mean 'username'?"),
    ("helper-missing-an-argument", "x = topic_match('a/#')\n", AUTHZ, 1, 5,
     "topic_match(): missing a required argument: 'topic'", "topic_match(filter, topic)"),
    ("helper-misspelt-keyword", "x = hash_check('p', 'h', salt_positon='prefix')\n", AUTHZ, 1, 5,
     "hash_check(): got an unexpected keyword argument 'salt_positon'", "salt_position='prefix'"),
    ("literal-pattern-that-cannot-compile", "x = regex_match('(', client.id)\n", AUTHZ, 1, 17,
     "regex_match(): invalid pattern '('", "Python re syntax"),
    ("decorator", "def d(f):\n    return f\n@d\ndef g():\n    pass\n", AUTHZ, 3, 2, "decorators are not allowed",
     "call the function directly"),
    ("mutable-default", "def f(x=[]):\n    return x\n", AUTHZ, 1, 9, "default value must be a constant", "None"),
    ("computed-default", "def f(x=len('a')):\n    return x\n", AUTHZ, 1, 9, "default value must be a constant", "None"),
    ("varargs", "def f(*a):\n    pass\n", AUTHZ, 1, 8, "'*args' and '**kwargs' parameters", "plain parameters"),
    ("keyword-only", "def f(*, a):\n    pass\n", AUTHZ, 1, 10, "keyword-only parameters", "plain parameters"),
    ("annotation", "x: int = 1\n", AUTHZ, 1, 1, "annotations are not allowed", "name = value"),
    ("yield", "def f():\n    yield 1\n", AUTHZ, 2, 5, "'yield' is not allowed", "return a list"),
    ("async-def", "async def f():\n    pass\n", AUTHZ, 1, 1, "'async def' is not allowed", "plain 'def'"),
    ("match", "match client.username:\n    case 'a':\n        pass\n", AUTHZ, 1, 1, "'match' is not allowed", "if/elif"),
    ("direct-recursion", "def f():\n    f()\n", AUTHZ, 2, 5, "function 'f' calls itself (f -> f)", "for"),
    ("mutual-recursion", "def a():\n    b()\ndef b():\n    a()\n", AUTHZ, 4, 5, "recursion is not allowed", "for"),
    ("top-level-return", "x = 1\nreturn\n", AUTHZ, 2, 1, "'return' outside", "allow()"),
    ("break-outside-loop", "x = 1\nbreak\n", AUTHZ, 2, 1, "'break' outside", "for"),
    ("continue-outside-loop", "x = 1\nif x:\n    continue\n", AUTHZ, 3, 5, "'continue'", "for"),
    ("unknown-name-near-miss", "x = clinet.username\n", AUTHZ, 1, 5, "unknown name 'clinet'", "did you mean 'client'?"),
    ("unknown-name-far", "x = 1\ny = zzqqxx\n", AUTHZ, 2, 5, "unknown name 'zzqqxx'", "define it first"),
    ("unknown-function-call", "x = 1\nfoo(x)\n", AUTHZ, 2, 1, "unknown name 'foo'", "define it first"),
    ("print", "x = 1\nprint(x)\n", AUTHZ, 2, 1, "'print' is not available", "log("),
    ("name-from-another-hook", "x = message.topic\n", AUTHN, 1, 5, "'message' is not available in client.authenticate",
     "this hook provides: broker, channel, client, hook, request, result"),
    ("topic-in-authenticate", "if topic:\n    allow()\n", AUTHN, 1, 4, "'topic' is not available in client.authenticate",
     "this hook provides"),
    ("rewrite-in-authenticate", "rewrite(topic='a')\n", AUTHN, 1, 1, "rewrite() is not available in client.authenticate",
     "rewrite() works in: message.publish"),
    ("drop-in-authenticate", "if client.username:\n    drop()\n", AUTHN, 2, 5, "drop() is not available in client.authenticate",
     "drop() works in: message.publish"),
    ("allow-in-notification", "allow()\n", "client.connected", 1, 1, "allow() cannot be used in client.connected",
     "use log(...)"),
    ("deny-in-notification", "x = 1\ndeny('no')\n", "session.created", 2, 1, "deny() cannot be used in session.created",
     "use log(...)"),
    ("assign-provided-name", "client = 1\n", AUTHZ, 1, 1, "cannot assign to 'client'", "another name"),
    ("assign-decision-name", "x = 1\nallow = x\n", AUTHZ, 2, 1, "cannot assign to 'allow'", "another name"),
    ("assign-other-hooks-name", "message = 1\n", AUTHN, 1, 1, "cannot assign to 'message'", "another name"),
    ("for-target-provided-name", "for topic in ['a']:\n    pass\n", AUTHZ, 1, 5, "cannot assign to 'topic'", "another name"),
    ("def-provided-name", "def client():\n    pass\n", AUTHZ, 1, 1, "cannot assign to 'client'", "another name"),
    ("assign-attribute", "client.username = 'x'\n", AUTHZ, 1, 1, "cannot assign to attribute 'username'", "read-only"),
    ("assign-attribute-in-def", "def f():\n    client.id = 'x'\n", AUTHZ, 2, 5, "cannot assign to attribute 'id'",
     "read-only"),
    ("fstring-huge-width", "x = 1\ny = f'{x:>100000}'\n", AUTHZ, 2, 5, "asks for too wide a field", "under 1000"),
    ("fstring-huge-precision", "x = 1.5\ny = f'{x:.5000f}'\n", AUTHZ, 2, 5, "asks for too wide a field", "under 1000"),
    ("fstring-computed-spec", "x = 1\nw = 5\ny = f'{x:>{w}}'\n", AUTHZ, 3, 5, "format spec must be a literal",
     "as a number"),
]


@pytest.mark.parametrize(("src", "hook", "line", "col", "message", "hint"),
                         [pytest.param(*case[1:], id=case[0]) for case in REFUSED])
def test_refused_construct_is_a_load_error_with_location_and_hint(src: str, hook: str, line: int, col: int,
                                                                  message: str, hint: str) -> None:
    err = only_error(src, hook)
    assert_error(err, "check_error", line, col, message, hint)
    # the source line shown under the header is the one the location names
    assert err.source_line == src.splitlines()[line - 1]


def test_matmul_operator_is_refused_at_its_position() -> None:
    """'@' is in the checker's HINTS; its error must still say where it is."""
    err = only_error("x = 1\ny = x @ x\n")
    assert_error(err, "check_error", 2, 5, "'@' is not allowed", "matrices")


def test_print_can_be_defined_by_the_rule() -> None:
    """'print' is refused only as an unknown name: a rule's own def of it is fine (and shadows nothing)."""
    rule = compile_src("def print(x):\n    return x\nallow()\n")
    assert rule.topics == ()


def test_provided_names_may_be_shadowed_inside_a_def() -> None:
    rule = compile_src("def f(client, topic):\n    return topic\nallow()\n")
    assert isinstance(rule, CompiledRule)


# -- TOPICS -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "topics"), [
    ("TOPICS = ['t/#', 'sensors/+/temp']\nallow()\n", ("t/#", "sensors/+/temp")),
    ("TOPICS = ('#',)\nallow()\n", ("#",)),
    ("TOPICS = []\nallow()\n", ()),
    ("allow()\n", ()),
])
def test_topics_in_message_publish_are_compiled(src: str, topics: tuple[str, ...]) -> None:
    assert compile_src(src, PUBLISH).topics == topics


@pytest.mark.parametrize(("src", "hook", "line", "col", "message", "hint"), [
    pytest.param("TOPICS = ['a/#']\nallow()\n", AUTHN, 1, 1, "TOPICS is only read in EMQX message.* rules",
                 "topic_match", id="in-client.authenticate"),
    pytest.param("TOPICS = ['a/#']\n", "client.subscribe", 1, 1, "TOPICS is only read in EMQX message.* rules",
                 "topic_match", id="in-client.subscribe"),
    pytest.param("T = 'a/#'\nTOPICS = [T]\n", PUBLISH, 2, 10, "must be a literal list", "TOPICS = [", id="non-literal-element"),
    pytest.param("TOPICS = 'a/#'\n", PUBLISH, 1, 10, "must be a literal list", "TOPICS = [", id="a-string"),
    pytest.param("TOPICS = ['a' + '/#']\n", PUBLISH, 1, 10, "must be a literal list", "TOPICS = [", id="expression"),
    pytest.param("TOPICS = ['ok/#', 'a/#/b']\n", PUBLISH, 1, 19, "invalid topic filter 'a/#/b'", "'#' for the rest",
                 id="hash-not-last"),
    pytest.param("TOPICS = ['a+']\n", PUBLISH, 1, 11, "invalid topic filter 'a+'", "'+' stands for one whole level",
                 id="plus-not-whole-level"),
    pytest.param("TOPICS = ['']\n", PUBLISH, 1, 11, "non-empty", "'+' stands", id="empty-filter"),
    pytest.param("TOPICS = ['a']\nTOPICS = ['b']\n", PUBLISH, 2, 1, "assigned twice", "one list", id="twice"),
    pytest.param("def f():\n    TOPICS = ['a']\n", PUBLISH, 2, 5, "only be assigned once, at the top level",
                 "literal list", id="inside-def"),
    pytest.param("TOPICS = ['a']\nTOPICS += ['b']\n", PUBLISH, 2, 1, "only be assigned once, at the top level",
                 "literal list", id="augmented"),
])
def test_bad_topics_are_load_errors(src: str, hook: str, line: int, col: int, message: str, hint: str) -> None:
    assert_error(only_error(src, hook), "check_error", line, col, message, hint)


# -- syntax, encoding, size, nesting ----------------------------------------------------------------


@pytest.mark.parametrize(("src", "hook", "line", "col", "message", "hint"), [
    pytest.param("x = 1\nif x\n    pass\n", AUTHZ, 2, 5, "expected ':'", "missing ':'", id="missing-colon"),
    pytest.param("x = (1,\n", AUTHZ, 1, 5, "never closed", "Python syntax", id="unclosed-bracket"),
    pytest.param("if True:\nx = 1\n", AUTHZ, 2, 1, "expected an indented block", "indent", id="missing-indent"),
    pytest.param("x = message.from\n", PUBLISH, 1, 13, "invalid syntax", "message.from_", id="message.from"),
    pytest.param("if message.from == 'a':\n    drop()\n", PUBLISH, 1, 12, "invalid syntax", "message.from_",
                 id="message.from-in-if"),
])
def test_syntax_errors_are_parse_errors_with_location_and_hint(src: str, hook: str, line: int, col: int,
                                                               message: str, hint: str) -> None:
    assert_error(only_error(src, hook), "parse_error", line, col, message, hint)


def test_non_utf8_file_is_a_parse_error_naming_the_byte() -> None:
    err = only_error(b"x = 1\ny = '\xff'\n")
    assert err.code == "parse_error"
    assert err.location.line == 0  # the whole file is meant
    assert str(err.location) == rule_path(AUTHZ) + ":1:1"  # file:line:col always, for editors
    assert "not UTF-8" in err.message and "byte 11" in err.message
    assert "UTF-8" in err.hint


def test_file_over_256_kib_is_a_load_error() -> None:
    src = "x = 1\n" + "#" * MAX_SOURCE_BYTES + "\n"
    err = only_error(src)
    assert err.code == "load_error"
    assert err.location.line == 0
    assert "256 KiB" in err.message
    assert err.hint


def test_file_of_exactly_256_kib_is_accepted() -> None:
    src = "allow()\n#"
    src += "x" * (MAX_SOURCE_BYTES - len(src) - 1) + "\n"
    assert len(src.encode()) == MAX_SOURCE_BYTES
    assert isinstance(compile_src(src), CompiledRule)


def test_nul_byte_is_a_parse_error() -> None:
    err = only_error("x = 1\x00\n")
    assert err.code == "parse_error"
    assert "null bytes" in err.message
    assert err.hint


NESTED = [
    pytest.param("x = " + "-" * 200 + "1\n", id="200-unary-minus"),
    pytest.param("x = " + "not " * 200 + "True\n", id="200-not"),
    pytest.param("x = " + "[" * 150 + "]" * 150 + "\n", id="150-nested-lists"),
    pytest.param("x = 1" + " + 1" * 300 + "\n", id="300-additions"),
    pytest.param("x = " + "(1, " * 150 + "1" + ")" * 150 + "\n", id="150-nested-tuples"),
    pytest.param("x = " + "abs(" * 150 + "1" + ")" * 150 + "\n", id="150-nested-calls"),
]


@pytest.mark.parametrize("src", NESTED)
def test_deep_nesting_is_refused(src: str) -> None:
    errors = load_errors(src)
    assert all(e.code == "check_error" for e in errors)
    assert all(f"nested more than {MAX_DEPTH} levels deep" in e.message for e in errors)
    assert all(e.hint for e in errors)
    assert any(e.location.line == 1 and e.location.col > 1 for e in errors)


@pytest.mark.parametrize("src", [NESTED[0], NESTED[2], NESTED[3]])
def test_deep_nesting_errors_all_have_a_location(src: str) -> None:
    """Every error names line:col. (Operator and context nodes have no position of their own.)"""
    errors = load_errors(src)
    assert [(e.location.line, e.location.col > 0) for e in errors] == [(1, True)] * len(errors), \
        [e.one_line() for e in errors]


def test_200_nested_parentheses_are_just_grouping() -> None:
    """Parentheses alone add no nesting to the tree: this is `x = 1`, and it loads."""
    rule = compile_src("x = " + "(" * 200 + "1" + ")" * 200 + "\nallow()\n")
    assert isinstance(rule, CompiledRule)


def test_201_nested_parentheses_are_a_parse_error() -> None:
    err = only_error("x = " + "(" * 201 + "1" + ")" * 201 + "\n")
    assert_error(err, "parse_error", 1, 205, "too many nested parentheses", "Python syntax")


def test_too_many_indentation_levels_are_a_parse_error() -> None:
    src = "".join("    " * i + "if True:\n" for i in range(101)) + "    " * 101 + "pass\n"
    err = only_error(src)
    assert err.code == "parse_error"
    assert err.location.line == 101
    assert "indentation" in err.message
    assert "indent" in err.hint


@pytest.mark.parametrize("src", [
    pytest.param("x = " + "-" * 100_000 + "1\n", id="100k-unary-minus"),
    pytest.param("x = " + "not " * 50_000 + "True\n", id="50k-not"),
])
def test_absurd_nesting_never_crashes(src: str) -> None:
    err = only_error(src)
    assert err.code == "parse_error"
    assert err.hint


@pytest.mark.parametrize("src", [
    pytest.param("x = " + "-" * 100_000 + "1\n", id="100k-unary-minus"),
    pytest.param("x = " + "not " * 50_000 + "True\n", id="50k-not"),
])
def test_absurd_nesting_error_says_what_is_wrong(src: str) -> None:
    """The parser's MemoryError has no text of its own: the message must still name the problem."""
    err = only_error(src)
    assert "nest" in err.message, err.one_line()


# -- several errors -------------------------------------------------------------------------------


def test_every_error_in_a_file_is_reported_sorted_by_position() -> None:
    src = (
        "import os\n"                 # 1:1  walk
        "x = clinet.username\n"       # 2:5  walk
        "client = 1\n"                # 3:1  found by the bindings pass, before the walk
        "while True:\n"               # 4:1  walk
        "    pass\n"
        "y = 1; z = '{}'.format(y)\n"  # 6:12 walk
    )
    errors = load_errors(src)
    assert [(e.location.line, e.location.col) for e in errors] == [(1, 1), (2, 5), (3, 1), (4, 1), (6, 12)]
    assert [e.code for e in errors] == ["check_error"] * 5
    assert all(e.hint for e in errors)
    text = RuleLoadError(errors).format()
    assert text.startswith(f"5 errors in {rule_path(AUTHZ)}")


def test_misplaced_break_is_reported_along_with_the_other_errors() -> None:
    """'Every problem in a file is reported at once': break/return outside their blocks too."""
    errors = load_errors("import os\nx = 1\nbreak\n")
    assert [(e.location.line, e.location.col) for e in errors] == [(1, 1), (3, 1)]
    assert "'import' is not allowed" in errors[0].message
    assert "'break' outside" in errors[1].message
    assert all(e.hint for e in errors)


def test_error_format_points_a_caret_at_the_column() -> None:
    with pytest.raises(RuleLoadError) as info:
        compile_src("x = 1\ny = clinet\n")
    text = info.value.format()
    lines = text.splitlines()
    assert lines[0] == f"1 error in {rule_path(AUTHZ)}"
    assert lines[1] == f"{rule_path(AUTHZ)}:2:5: check_error: unknown name 'clinet'"
    assert lines[2] == "    y = clinet"
    assert lines[3] == "    " + " " * 4 + "^"
    assert lines[4] == "  hint: did you mean 'client'?"


# -- columns count characters -------------------------------------------------------------------


@pytest.mark.parametrize(("src", "code", "line", "col", "message"), [
    pytest.param("x = 'ééé'; import os\n", "check_error", 1, 12, "'import' is not allowed", id="after-accents"),
    pytest.param("'ééé' + undefined_name\n", "check_error", 1, 9, "unknown name", id="line-starts-with-accents"),
    pytest.param("'日本語' + clinet\n", "check_error", 1, 9, "unknown name 'clinet'", id="line-starts-with-cjk"),
    pytest.param("x = 1\ny = '🙂🙂'; z = client.__class__\n", "check_error", 2, 15, "'__class__'", id="emoji"),
    pytest.param("x = 'ééé'; y = )\n", "parse_error", 1, 16, "unmatched ')'", id="parse-error-after-accents"),
    pytest.param("x = 'ééé'; break\n", "check_error", 1, 12, "'break' outside", id="break-after-accents"),
    pytest.param("x = 'ééé'; return\n", "check_error", 1, 12, "'return' outside", id="return-after-accents"),
])
def test_column_counts_characters_not_bytes(src: str, code: str, line: int, col: int, message: str) -> None:
    err = only_error(src)
    assert err.code == code
    assert message in err.message
    assert (err.location.line, err.location.col) == (line, col), err.one_line()


@pytest.mark.parametrize("separator", ["\u2028", "\x0c", "\x85"], ids=["U+2028", "form-feed", "NEL"])
def test_location_and_source_line_follow_python_line_numbers(separator: str) -> None:
    """str.splitlines() also splits at U+2028, form feed and NEL, which Python does not count as line ends."""
    src = f"# note{separator}éééééééé\ny = 1; import os\n"
    err = only_error(src)
    assert err.location.line == 2
    assert err.source_line == "y = 1; import os"
    assert err.location.col == 8


# -- the bundled rules ----------------------------------------------------------------------------

BUNDLED = sorted(BUNDLED_RULES.glob("*.star"))


def test_there_are_bundled_rules() -> None:
    assert {p.name for p in BUNDLED} == {"authenticate.star", "authorize.star", "message.publish.star"}


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_rule_compiles(path: Path) -> None:
    hook = hook_for_file(path.name)
    assert hook is not None
    rule = compile_rule(str(path), path.read_bytes(), HOOKS[hook])
    assert rule.hook is HOOKS[hook]
    assert len(rule.version) == 12
    if hook == PUBLISH:
        assert rule.topics == ("t/#", "sensors/#")
    else:
        assert rule.topics == ()


def test_scan_loads_every_bundled_rule() -> None:
    ruleset, outcomes = scan(BUNDLED_RULES, RuleSet())
    assert {o.hook: o.result for o in outcomes} == {hook_for_file(p.name): "loaded" for p in BUNDLED}
    assert sorted(ruleset) == sorted(hook_for_file(p.name) for p in BUNDLED)


@pytest.mark.parametrize("hook", sorted(HOOKS))
@pytest.mark.parametrize("decision", ["rewrite(topic='a')", "drop()", "allow()", "deny('x')", "ignore()"])
def test_an_unavailable_decision_hint_names_what_works(hook: str, decision: str) -> None:
    """Every hook's refusal of a decision says what to do instead: never an empty list ("rewrite() works
    in: " for the portable authorize, whose own broker group has no hook that rewrites)."""
    name = decision.split("(")[0]
    if name in HOOKS[hook].decisions:
        return
    err = only_error(decision + "\n", hook)
    assert err.code == "check_error" and f"{name}()" in err.message, err.message
    assert err.hint and not err.hint.rstrip().endswith(":"), (hook, err.hint)
    if HOOKS[hook].broker == "portable" and name in ("rewrite", "drop") and hook == "authorize":
        assert "auth_on_publish.star" in err.hint, err.hint
