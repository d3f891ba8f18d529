"""Data files: `<rules>/data/*.json|yaml|yml|csv` become `data.<name>` in every rule, read-only.

Users keep ACL tables and user lists here. A file that fails to parse keeps its last good contents,
like a rule; the whole set has a version (a hash of every file's contents) so rules that read it are
rebuilt when it changes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import json.scanner
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .errors import Location, RuleError
from .events import freeze
from .files import FileRefused, collector_paused, read_file

DATA_DIR = "data"
SUFFIXES = (".json", ".yaml", ".yml", ".csv")
MAX_DATA_BYTES = 16 * 1024 * 1024
#: all the data files together (in name order; a file past it is a load error of that file): loaded data
#: takes a few times its size in memory (twelve 16 MiB YAML files took 667 MB), so the whole set must
#: be bounded, not only each file
MAX_DATA_TOTAL_BYTES = 48 * 1024 * 1024
#: values (each number, string, list and mapping, each CSV field) one file may hold: loading keeps a
#: few hundred bytes per value (YAML's nodes most), so this bounds a file's memory whatever its shape
MAX_DATA_ITEMS = 500_000
#: JSON files up to this size are parsed by the C scanner, in one call that lets no other thread run
JSON_C_MAX_BYTES = 1024 * 1024
#: the longest CSV line: the csv module parses a line in one such call
CSV_MAX_LINE = 1024 * 1024
#: libyaml's parser where PyYAML was built with it: the pure-Python one is several times slower
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DataNamespace:
    """What a rule sees as `data`: `data.users` or `data["user-list"]`, never changeable."""

    __slots__ = ("_files",)

    def __init__(self, files: Mapping[str, Any]):
        object.__setattr__(self, "_files", MappingProxyType(dict(files)))

    def __getattribute__(self, name: str) -> Any:
        """A data file's name wins over the namespace's own attributes: `data/keys.json` (a JWT key set)
        is `data.keys`, not the keys() method, which `hookrules check` passed and every run then failed
        on ("'method' object is not subscriptable"). File names are the author's; methods are ours."""
        if name[:1] != "_":
            files = object.__getattribute__(self, "_files")
            if name in files:
                return files[name]
        return object.__getattribute__(self, name)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._files[name]
        except KeyError:
            raise AttributeError(f"no data file named '{name}'; data files: {', '.join(self._files) or 'none'}") from None

    def __getitem__(self, name: str) -> Any:
        try:
            return self._files[name]
        except KeyError:
            raise KeyError(f"no data file named '{name}'") from None

    def __contains__(self, name: object) -> bool:
        return name in self._files

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("data is read-only")

    def keys(self) -> tuple[str, ...]:
        return tuple(self._files)

    def __repr__(self) -> str:
        return f"<data: {', '.join(self._files)}>"


@dataclass(frozen=True)
class DataFile:
    name: str
    path: str
    version: str
    value: Any
    size: int = 0  # bytes of the file it was loaded from: counted against MAX_DATA_TOTAL_BYTES


@dataclass(frozen=True)
class DataSet:
    files: Mapping[str, DataFile] = field(default_factory=lambda: MappingProxyType({}))
    #: files whose current contents failed, by path: (content hash, errors). An unchanged broken file
    #: is not parsed again (a 2 MB YAML file with an error at its end took seconds on every rescan).
    failed: Mapping[str, tuple[str, tuple[RuleError, ...]]] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def version(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.files):
            digest.update(f"{name}={self.files[name].version};".encode())
        return digest.hexdigest()[:12]

    def namespace(self) -> DataNamespace:
        return DataNamespace({name: f.value for name, f in self.files.items()})


@dataclass(frozen=True, slots=True)
class DataOutcome:
    name: str
    path: str
    result: str  # "loaded" | "unchanged" | "error" | "removed" | "pending" (changed while read: read again later)
    version: str = ""
    errors: tuple[RuleError, ...] = ()
    kept_version: str = ""


def data_files(root: Path) -> Iterator[Path]:
    directory = root / DATA_DIR
    try:
        paths = sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return
    yield from paths


def parse(path: str, raw: bytes) -> Any:
    """The file's contents as frozen plain data; DataError on anything wrong, with line and column.

    Every failure is the file's DataError, whatever raised it (a 5,000-digit number is a ValueError
    of int(), a huge file a MemoryError): one bad file must never fail the scan of the others."""
    try:
        with collector_paused():
            return _parse(path, raw)
    except DataError:
        raise
    except RecursionError:
        raise _error(path, 0, 0, "nested too deeply", "flatten the structure") from None
    except MemoryError:
        raise _error(path, 0, 0, "too big to load", "split it, or trim it") from None
    except ValueError as exc:
        if "digits" in str(exc):  # int()'s guard against quadratic conversions (sys.int_info)
            raise _error(path, 0, 0, "a number has too many digits to read",
                         "write very long numbers as strings") from None
        raise _error(path, 0, 0, f"cannot read it: {exc}", "check the file's syntax") from None
    except Exception as exc:
        raise _error(path, 0, 0, f"cannot read it: {type(exc).__name__}: {exc}", "check the file's syntax") from None


def _parse(path: str, raw: bytes) -> Any:
    if len(raw) > MAX_DATA_BYTES:
        raise _error(path, 0, 0, f"data file is over {MAX_DATA_BYTES // (1024 * 1024)} MiB", "split it, or trim it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(path, 0, 0, f"not UTF-8 ({exc.reason} at byte {exc.start})", "save the file as UTF-8") from None
    # A byte order mark (Excel's "CSV UTF-8", Notepad) is no part of the contents, in every format: CSV
    # made it part of the first header ('\ufeffuser', so row["user"] failed), JSON refused the file
    text = text[1:] if text.startswith("\ufeff") else text
    suffix = Path(path).suffix
    if suffix == ".json":
        try:
            return freeze(_load_json(path, text))
        except _DuplicateKey as dup:
            line, col = _line_col(text, _duplicate_at(text))
            raise _error(path, line, col, f"the key {dup.key!r} appears twice in this object",
                         "keep one of them: a duplicate would silently replace the first") from None
        except json.JSONDecodeError as exc:
            raise _error(path, exc.lineno, exc.colno, f"invalid JSON: {exc.msg}", "check the JSON syntax") from None
    if suffix in (".yaml", ".yml"):
        try:
            return _load_yaml(path, text)  # frozen as it is built
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise _error(path, line, col, f"invalid YAML: {problem}", "check the indentation and quoting") from None
    return _load_csv(path, text)


def _too_many(path: str) -> DataError:
    return _error(path, 0, 0, f"data file holds over {MAX_DATA_ITEMS:,} values", "split it, or trim it")


def _load_json(path: str, text: str) -> Any:
    """json.loads is one C call that holds the GIL (16 MB: 400 ms, every broker call waiting): the C
    scanner only for small files. Bigger ones go through the pure-Python scanner, which lets other
    threads in every few milliseconds, and counts what it builds."""
    if len(text) <= JSON_C_MAX_BYTES:
        # at most ~40 bytes of objects per byte of text: bounded
        return json.loads(text, object_pairs_hook=_no_duplicates)
    count = [0]

    def counted(parse: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            count[0] += 1
            if count[0] > MAX_DATA_ITEMS:
                raise _too_many(path)
            return parse(*args)
        return run

    decoder: Any = json.JSONDecoder(object_pairs_hook=_no_duplicates)
    decoder.parse_object = counted(decoder.parse_object)
    decoder.parse_array = counted(decoder.parse_array)
    decoder.parse_string = counted(decoder.parse_string)
    decoder.parse_int = counted(int)
    decoder.parse_float = counted(float)
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(text)


class _DuplicateKey(Exception):
    def __init__(self, key: Any):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A JSON object whose keys are all different: a duplicate is an error, not last-wins (YAML's too)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[Any] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def _duplicate_at(text: str) -> int:
    """Where the first object with a duplicate key starts: parsed again (an error's path only) by the
    pure-Python scanner, which says where each object starts."""
    decoder: Any = json.JSONDecoder(object_pairs_hook=_no_duplicates)
    plain = decoder.parse_object

    def located(s_and_end: tuple[str, int], *args: Any) -> Any:
        try:
            return plain(s_and_end, *args)
        except _DuplicateKey as exc:
            if not hasattr(exc, "pos"):
                exc.pos = s_and_end[1] - 1  # type: ignore[attr-defined]
            raise

    decoder.parse_object = located
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        decoder.decode(text)
    except _DuplicateKey as exc:
        return int(getattr(exc, "pos", 0))
    except (ValueError, RecursionError):
        pass
    return 0


def _line_col(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)


_SEQ, _MAP = "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"


def _load_yaml(path: str, text: str) -> Any:
    """The document built straight from libyaml's events, frozen as it is built: no node tree (YAML's
    nodes and their marks took about 400 bytes a value, ten times what the values keep), no second
    copy to freeze, every value counted as it comes, and aliases refused where they appear."""
    loader = _Loader(text)
    stack: list[tuple[list[Any], bool, list[Any]]] = []  # open collections: (items so far, is a mapping, marks)
    result: list[Any] = []
    values = documents = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
                values += 1
                if values > MAX_DATA_ITEMS:
                    raise _too_many(path)
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise yaml.composer.ComposerError("expected a single document in the stream", None,
                                                      "but found another document", event.start_mark)
                continue
            if isinstance(event, yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in data files",
                                                  event.start_mark)
            if isinstance(event, yaml.CollectionStartEvent):
                is_map = isinstance(event, yaml.MappingStartEvent)
                tag = event.tag if event.tag not in (None, "!") else (_MAP if is_map else _SEQ)
                if tag != (_MAP if is_map else _SEQ):
                    raise yaml.constructor.ConstructorError(None, None, f"the tag {tag} is not allowed in data files",
                                                            event.start_mark)
                stack.append(([], is_map, []))
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                items, is_map, marks = stack.pop()
                value = _mapping(items, marks, event) if is_map else tuple(items)
            elif isinstance(event, yaml.ScalarEvent):
                value = _scalar(loader, event)
            else:
                continue  # stream and document ends
            if stack:
                stack[-1][0].append(value)
                if stack[-1][1]:
                    stack[-1][2].append(event.start_mark)  # where each key is, for a duplicate's error
            else:
                result.append(value)
    finally:
        loader.dispose()
    return result[0] if result else None


def _scalar(loader: Any, event: Any) -> Any:
    tag = event.tag
    if tag is None or tag == "!":
        tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
    if tag == "tag:yaml.org,2002:merge":
        raise yaml.constructor.ConstructorError(None, None, "merge keys (<<) are not allowed in data files",
                                                event.start_mark)
    node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    construct = loader.yaml_constructors.get(tag) or loader.yaml_constructors[None]  # None: an unknown tag
    return construct(loader, node)


def _mapping(items: list[Any], marks: list[Any], event: Any) -> MappingProxyType[Any, Any]:
    out: dict[Any, Any] = {}
    for i in range(0, len(items) - 1, 2):
        key = items[i]
        if isinstance(key, (tuple, MappingProxyType)):  # PyYAML refuses them too (unhashable there)
            raise yaml.constructor.ConstructorError(None, None, "a mapping key is a list or a mapping",
                                                    event.start_mark)
        if key in out:  # PyYAML keeps the last silently: a second entry for a user would replace the first
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice in this mapping",
                                                    marks[i] if i < len(marks) else event.start_mark)
        out[key] = items[i + 1]
    return MappingProxyType(out)


def _lines(path: str, text: str) -> Iterator[str]:
    """The text's lines for csv.reader, each at most CSV_MAX_LINE characters: the reader parses a
    line in one C call (a 16 MB line of commas: 0.7 s holding the GIL). Sliced from the text one at a
    time: io.StringIO would hold a second copy of it, four bytes a character."""
    start, end = 0, len(text)
    while start < end:
        stop = text.find("\n", start, start + CSV_MAX_LINE + 1)
        if stop < 0:
            if end - start > CSV_MAX_LINE:
                raise _error(path, 0, 0, f"a line is over {CSV_MAX_LINE // 1024} KiB", "split the row")
            stop = end - 1
        yield text[start:stop + 1]
        start = stop + 1


def _load_csv(path: str, text: str) -> Any:
    rows: list[Any] = []
    reader = csv.reader(_lines(path, text))
    try:
        header = next(reader, None)
        if header is None:
            return ()
        seen: set[str] = set()
        for index, name in enumerate(header):
            if name in seen:  # DictReader keeps the last column silently
                raise _error(path, 1, len(",".join(header[:index])) + (2 if index else 1),
                             f"the column {name!r} appears twice in the header", "rename or remove one of them")
            seen.add(name)
        items = len(header)
        for row in reader:
            if not row:
                continue  # DictReader's rule: blank lines are no rows
            if len(row) > len(header):
                raise _error(path, reader.line_num, 1, "a row has more fields than the header",
                             "every row needs the header's columns")
            items += len(header)
            if items > MAX_DATA_ITEMS:
                raise _too_many(path)
            row += [None] * (len(header) - len(row))  # type: ignore[list-item]
            rows.append(MappingProxyType(dict(zip(header, row))))
    except csv.Error as exc:
        raise _error(path, reader.line_num, 0, f"invalid CSV: {exc}", "check the quoting") from None
    return tuple(rows)


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """yaml.safe_load without anchors and aliases: a few hundred bytes of aliases can stand for
    billions of items (a "billion laughs"), which freezing would expand (refused in _load_yaml's
    first pass; compose_node below when libyaml is missing). Dates and times stay strings: a datetime
    object would hand rules a clock (.now(), .today()) and an unbounded strftime."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.get_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in data files",
                                              event.start_mark)
        return super().compose_node(parent, index)


class DataError(Exception):
    def __init__(self, error: RuleError):
        super().__init__(error.one_line())
        self.error = error


def _error(path: str, line: int, col: int, message: str, hint: str) -> DataError:
    return DataError(RuleError("load_error", Location(path, line, col), message, hint))


def scan_data(root: Path, previous: DataSet) -> tuple[DataSet, list[DataOutcome]]:
    """The data set from the files now in <root>/data; a file that fails keeps its last good version."""
    files: dict[str, DataFile] = {}
    failed: dict[str, tuple[str, tuple[RuleError, ...]]] = {}
    outcomes: list[DataOutcome] = []
    total = 0  # bytes of the files in the set so far
    try:
        paths = list(data_files(root))
    except OSError as exc:  # data/ not readable: keep every file's last good contents, and say why
        err = _error(str(root / DATA_DIR), 0, 0, f"cannot list: {exc.strerror or exc}",
                     "check the directory's permissions").error
        return previous, [DataOutcome(DATA_DIR, str(root / DATA_DIR), "error", errors=(err,))]
    for path in paths:
        name = path.stem
        shown = str(path)
        old = previous.files.get(name)
        if name in files:
            err = _error(shown, 0, 0, f"two data files are named '{name}' ({Path(files[name].path).name} and {path.name})",
                         "rename one of them").error
            outcomes.append(DataOutcome(name, shown, "error", errors=(err,)))
            continue
        version = ""
        over = False  # past the total: no property of its contents, not cached as their failure
        errors: tuple[RuleError, ...]
        try:
            raw, before = read_file(root, path, MAX_DATA_BYTES)
            after = os.stat(path)
        except FileNotFoundError:
            if not os.path.lexists(path):
                continue  # gone since the listing: as if never listed
            errors = (_error(shown, 0, 0, "cannot read: it is a symbolic link to nothing", "fix or remove the link").error,)
        except FileRefused as exc:
            errors = (_error(shown, 0, 0, exc.reason, exc.hint).error,)
        except OSError as exc:
            errors = (_error(shown, 0, 0, f"cannot read: {exc.strerror or exc}", "check the file's permissions").error,)
        else:
            if (before.st_size, before.st_mtime_ns, before.st_ino) != (after.st_size, after.st_mtime_ns, after.st_ino):
                # written while it was read (an in-place save): what was read may be half of it. As for
                # rules: the last good version serves until a rescan reads it whole
                outcomes.append(DataOutcome(name, shown, "pending"))
                if old is not None:
                    files[name] = old
                    total += old.size
                continue
            version = hashlib.sha256(raw).hexdigest()[:12]
            known = previous.failed.get(shown)
            if total + len(raw) > MAX_DATA_TOTAL_BYTES:
                over = True
                errors = (_error(shown, 0, 0, f"the data files together are over {MAX_DATA_TOTAL_BYTES // (1024 * 1024)} "
                                 f"MiB (files are counted in name order; this one is past the limit)",
                                 "trim or remove data files: every rule holds all of them in memory").error,)
            elif old is not None and old.version == version and old.path == shown:
                files[name] = old
                total += len(raw)
                outcomes.append(DataOutcome(name, shown, "unchanged", version))
                continue
            elif known is not None and known[0] == version:
                errors = known[1]  # the same broken contents: the same errors, without parsing again
            else:
                try:
                    files[name] = DataFile(name, shown, version, parse(shown, raw), len(raw))
                    total += len(raw)
                    outcomes.append(DataOutcome(name, shown, "loaded", version))
                    continue
                except DataError as exc_err:
                    errors = (exc_err.error,)
        # unreadable too (version ''): what it holds is unknown, and the rules reading data must show it
        failed[shown] = ("" if over else version, errors)
        outcomes.append(DataOutcome(name, shown, "error", version, errors, kept_version=old.version if old else ""))
        if old is not None:
            files[name] = old
    for name, old in previous.files.items():
        if name not in files and not any(o.name == name for o in outcomes):
            outcomes.append(DataOutcome(name, old.path, "removed", old.version))
    return DataSet(MappingProxyType(files), MappingProxyType(failed)), outcomes


# an explicit !!timestamp tag stays a string too
_Loader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))
