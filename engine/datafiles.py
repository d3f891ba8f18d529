"""Data files: `<rules>/data/*.json|yaml|yml|csv` become `data.<name>` in every rule, read-only.

Users keep ACL tables and user lists here. A file that fails to parse keeps its last good contents,
like a rule; the whole set has a version (a hash of every file's contents) so rules that read it are
rebuilt when it changes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .errors import Location, RuleError
from .events import freeze

DATA_DIR = "data"
SUFFIXES = (".json", ".yaml", ".yml", ".csv")
MAX_DATA_BYTES = 16 * 1024 * 1024


class DataNamespace:
    """What a rule sees as `data`: `data.users` or `data["user-list"]`, never changeable."""

    __slots__ = ("_files",)

    def __init__(self, files: Mapping[str, Any]):
        object.__setattr__(self, "_files", MappingProxyType(dict(files)))

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


@dataclass(frozen=True)
class DataSet:
    files: Mapping[str, DataFile] = field(default_factory=lambda: MappingProxyType({}))

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
    result: str  # "loaded" | "unchanged" | "error" | "removed"
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
    """The file's contents as frozen plain data; DataError on anything wrong, with line and column."""
    if len(raw) > MAX_DATA_BYTES:
        raise _error(path, 0, 0, f"data file is over {MAX_DATA_BYTES // (1024 * 1024)} MiB", "split it, or trim it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(path, 0, 0, f"not UTF-8 ({exc.reason} at byte {exc.start})", "save the file as UTF-8") from None
    suffix = Path(path).suffix
    if suffix == ".json":
        try:
            return freeze(json.loads(text))
        except json.JSONDecodeError as exc:
            raise _error(path, exc.lineno, exc.colno, f"invalid JSON: {exc.msg}", "check the JSON syntax") from None
        except RecursionError:
            raise _error(path, 0, 0, "JSON nested too deeply", "flatten the structure") from None
    if suffix in (".yaml", ".yml"):
        try:
            return freeze(yaml.load(text, Loader=_NoAliasLoader))  # noqa: S506 - a SafeLoader subclass
        except RecursionError:
            raise _error(path, 0, 0, "YAML nested too deeply", "flatten the structure") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise _error(path, line, col, f"invalid YAML: {problem}", "check the indentation and quoting") from None
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise _error(path, 0, 0, f"invalid CSV: {exc}", "check the quoting") from None
    if rows and None in rows[0]:
        raise _error(path, 2, 1, "a row has more fields than the header", "every row needs the header's columns")
    return tuple(MappingProxyType(dict(row)) for row in rows)


class _NoAliasLoader(yaml.SafeLoader):  # type: ignore[misc]
    """yaml.safe_load without anchors and aliases: a few hundred bytes of aliases can stand for
    billions of items (a "billion laughs"), which freezing would expand. Dates and times stay
    strings: a datetime object would hand rules a clock (.now(), .today()) and an unbounded strftime."""

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
    outcomes: list[DataOutcome] = []
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
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raw = None
            err = _error(shown, 0, 0, f"cannot read: {exc.strerror or exc}", "check the file's permissions").error
        if raw is not None:
            version = hashlib.sha256(raw).hexdigest()[:12]
            if old is not None and old.version == version and old.path == shown:
                files[name] = old
                outcomes.append(DataOutcome(name, shown, "unchanged", version))
                continue
            try:
                files[name] = DataFile(name, shown, version, parse(shown, raw))
                outcomes.append(DataOutcome(name, shown, "loaded", version))
                continue
            except DataError as exc_err:
                err = exc_err.error
        outcomes.append(DataOutcome(name, shown, "error", errors=(err,), kept_version=old.version if old else ""))
        if old is not None:
            files[name] = old
    for name, old in previous.files.items():
        if name not in files and not any(o.name == name for o in outcomes):
            outcomes.append(DataOutcome(name, old.path, "removed", old.version))
    return DataSet(MappingProxyType(files)), outcomes


# an explicit !!timestamp tag stays a string too
_NoAliasLoader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))
