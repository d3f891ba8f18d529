"""Every kind of bad file issue 9 (points 4 and 6) names, and the worst legitimate ones, as makers.

Shared by tests/test_files_load.py (behaviour: the server keeps answering, each is a load error) and
bench/load_stall.py (the figures: worst extra wait of a call, peak memory). Each maker writes its
file(s) into a rules directory and returns the paths (relative to it) whose load error the server
must report, or () for a legitimate file that must load.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

MiB = 1024 * 1024
Maker = Callable[[Path, Path], tuple[str, ...]]  # (rules directory, a directory outside it) -> reported paths


def _link(rules: Path, rel: str, target: str | Path) -> None:
    path = rules / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def _write(rules: Path, rel: str, data: str | bytes) -> None:
    """Written to a temp name and renamed in, as editors and ConfigMaps do: the watcher sees it whole."""
    path = rules / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def data_link_outside(rules: Path, outside: Path) -> tuple[str, ...]:
    _link(rules, "data/pw.csv", "/etc/passwd")
    return ("data/pw.csv",)


def library_dir_link_outside(rules: Path, outside: Path) -> tuple[str, ...]:
    (outside / "evil").mkdir(exist_ok=True)
    (outside / "evil" / "x.star").write_text("X = 1\n")
    _link(rules, "evil", outside / "evil")
    _write(rules, "auth_on_subscribe.star", 'load("evil/x.star", "X")\nallow()\n')
    return ("evil/x.star", "auth_on_subscribe.star")


def rule_link_outside(rules: Path, outside: Path) -> tuple[str, ...]:
    (outside / "r.star").write_text("allow()\n")
    _link(rules, "message.publish.star", outside / "r.star")
    return ("message.publish.star",)


def data_fifo(rules: Path, outside: Path) -> tuple[str, ...]:
    (rules / "data").mkdir(exist_ok=True)
    os.mkfifo(rules / "data" / "f.json")
    return ("data/f.json",)


def data_dev_zero(rules: Path, outside: Path) -> tuple[str, ...]:
    _link(rules, "data/z.json", "/dev/zero")  # outside too; a device all the same
    return ("data/z.json",)


def data_socket(rules: Path, outside: Path) -> tuple[str, ...]:
    (rules / "data").mkdir(exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(rules / "data" / "s.yaml"))
    finally:
        sock.close()  # the socket file stays
    return ("data/s.yaml",)


def data_directory(rules: Path, outside: Path) -> tuple[str, ...]:
    (rules / "data" / "d.json").mkdir(parents=True)
    return ("data/d.json",)


def data_dangling_link(rules: Path, outside: Path) -> tuple[str, ...]:
    _link(rules, "data/gone.json", "nothing-here.json")
    return ("data/gone.json",)


def library_fifo(rules: Path, outside: Path) -> tuple[str, ...]:
    (rules / "lib").mkdir(exist_ok=True)
    os.mkfifo(rules / "lib" / "pipe.star")
    _write(rules, "auth_on_publish.star", 'load("lib/pipe.star", "X")\nallow()\n')
    return ("lib/pipe.star", "auth_on_publish.star")


def data_sparse_2g(rules: Path, outside: Path) -> tuple[str, ...]:
    (rules / "data").mkdir(exist_ok=True)
    tmp = rules / "data" / ".big.json.tmp"
    with open(tmp, "wb") as f:
        f.truncate(2048 * MiB)
    os.replace(tmp, rules / "data" / "big.json")
    return ("data/big.json",)


def rule_sparse(rules: Path, outside: Path) -> tuple[str, ...]:
    tmp = rules / ".client.authorize.star.tmp"
    with open(tmp, "wb") as f:
        f.truncate(64 * MiB)
    os.replace(tmp, rules / "client.authorize.star")
    return ("client.authorize.star",)


def _digits(n: int) -> str:
    return "7" * n


def data_huge_int_json(rules: Path, outside: Path) -> tuple[str, ...]:
    _write(rules, "data/n1.json", "[" + _digits(5000) + "]")
    return ("data/n1.json",)


def data_huge_int_yaml(rules: Path, outside: Path) -> tuple[str, ...]:
    _write(rules, "data/n2.yaml", "n: " + _digits(5000) + "\n")
    return ("data/n2.yaml",)


def data_huge_int_big_json(rules: Path, outside: Path) -> tuple[str, ...]:
    """Over the C scanner's size: the pure-Python one must fail the same way."""
    _write(rules, "data/n3.json", '{"pad": "' + "x" * (2 * MiB) + '", "n": ' + _digits(5000) + "}")
    return ("data/n3.json",)


def rule_huge_int(rules: Path, outside: Path) -> tuple[str, ...]:
    _write(rules, "auth_on_register_m5.star", "x = " + _digits(5000) + "\nallow()\n")
    return ("auth_on_register_m5.star",)


def data_broken_yaml_2m(rules: Path, outside: Path) -> tuple[str, ...]:
    body = "".join(f"user{i}:\n  name: n{i}\n  topics: [a/{i}, b/{i}]\n" for i in range(50_000))
    _write(rules, "data/broken.yaml", body + "oops: [unclosed\n")
    return ("data/broken.yaml",)


def data_deep_json(rules: Path, outside: Path) -> tuple[str, ...]:
    _write(rules, "data/deep.json", "[" * 200_000 + "]" * 200_000)
    return ("data/deep.json",)


def data_deep_big_json(rules: Path, outside: Path) -> tuple[str, ...]:
    _write(rules, "data/deep2.json", "[" * (1 * MiB) + "]" * (1 * MiB))
    return ("data/deep2.json",)


def data_csv_16m_tiny_rows(rules: Path, outside: Path) -> tuple[str, ...]:
    _write(rules, "data/rows.csv", "a,b\n" + "1,2\n" * (4 * MiB - 2))
    return ("data/rows.csv",)


def data_csv_one_long_line(rules: Path, outside: Path) -> tuple[str, ...]:
    _write(rules, "data/line.csv", "a\n" + "x," * (7 * MiB) + "\n")
    return ("data/line.csv",)


def data_json_tiny_objects(rules: Path, outside: Path) -> tuple[str, ...]:
    _write(rules, "data/objs.json", "[" + "{}," * (5 * MiB) + "{}]")
    return ("data/objs.json",)


def data_yaml_many_nodes(rules: Path, outside: Path) -> tuple[str, ...]:
    _write(rules, "data/nodes.yaml", "- a\n" * (4 * MiB - 1))
    return ("data/nodes.yaml",)


def data_yaml_alias_bomb(rules: Path, outside: Path) -> tuple[str, ...]:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    _write(rules, "data/bomb.yaml", "\n".join(lines) + "\n")
    return ("data/bomb.yaml",)


def data_not_utf8(rules: Path, outside: Path) -> tuple[str, ...]:
    _write(rules, "data/latin.csv", "name\n".encode() + "Jos\u00e9\n".encode("latin-1"))
    return ("data/latin.csv",)


def _rule_lines(limit: int) -> str:
    body, size, i = [], 0, 0
    while True:
        line = f"if client.username == \"user{i}\" and len(client.id) > {i % 7}:\n    deny(\"no {i}\")\n"
        if size + len(line) + len("allow()\n") > limit:
            return "".join(body) + "allow()\n"
        body.append(line)
        size += len(line)
        i += 1


def rule_over_limit(rules: Path, outside: Path) -> tuple[str, ...]:
    """A 256 KB rule took 1-2 s to compile, 0.3-0.7 s of it in one ast.parse call."""
    _write(rules, "client.authorize.star", _rule_lines(256 * 1024))
    return ("client.authorize.star",)


def rule_at_limit(rules: Path, outside: Path) -> tuple[str, ...]:
    """The largest rule file allowed (64 KiB): legitimate, and the slowest to parse and compile."""
    _write(rules, "client.authorize.star", _rule_lines(64 * 1024))
    return ()


def library_at_limit(rules: Path, outside: Path) -> tuple[str, ...]:
    """The largest library allowed, dense: a table of constants."""
    body = "T = [" + ",".join(f'"k{i}"' for i in range(9000)) + "]\n"
    _write(rules, "lib/table.star", body[: 64 * 1024 - 40].rsplit(",", 1)[0] + "]\n" + "def n():\n    return len(T)\n")
    _write(rules, "auth_on_publish.star", 'load("lib/table.star", "n")\nif n() > 0:\n    allow()\n')
    return ()


def library_diamond(rules: Path, outside: Path) -> tuple[str, ...]:
    """18 levels, two libraries each, each loading both of the level below: 2^18 runs of the bottom
    one when each load() ran its library again."""
    for rel, text in diamond_files("diamond", 18, "auth_on_subscribe_m5.star").items():
        _write(rules, rel, text)
    return ()


def diamond_files(folder: str, levels: int, rule: str, bottom: str = "") -> dict[str, str]:
    """A diamond of libraries `levels` deep under `folder`, two a level, each loading both of the level
    below (2^levels runs of the bottom one if each load() ran its library again), and `rule` loading the
    top: {path in the rules directory: text}, bottom first. `bottom` is prepended to the bottom library."""
    files = {f"{folder}/l{levels}a.star": bottom + "def f(x):\n    return x + 1\n",
             f"{folder}/l{levels}b.star": "def f(x):\n    return x + 1\n"}
    for level in range(levels - 1, -1, -1):
        for side in "ab":
            files[f"{folder}/l{level}{side}.star"] = (
                f'load("{folder}/l{level + 1}a.star", fa="f")\nload("{folder}/l{level + 1}b.star", fb="f")\n'
                "def f(x):\n    return fa(x) + fb(x)\n")
    files[rule] = f'load("{folder}/l0a.star", "f")\nallow()\n'
    return files


def library_slow_top_level(rules: Path, outside: Path) -> tuple[str, ...]:
    """A library whose top level spends its whole budget: the load fails, the server keeps answering."""
    _write(rules, "lib/slow.star", "t = 0\nfor i in range(10000000):\n    t = t + i\n")
    _write(rules, "auth_on_publish_m5.star", 'load("lib/slow.star", "t")\nallow()\n')
    return ("lib/slow.star",)


def data_json_15m(rules: Path, outside: Path) -> tuple[str, ...]:
    """A big legitimate JSON file: under both limits (about 14 MB, 440,000 values)."""
    row = '{"user": "%s", "topics": ["%s"]}'
    pad = "u" * 40
    rows = [row % (f"{pad}{i}", "t/" + "x" * 50 + str(i)) for i in range(110_000)]
    _write(rules, "data/table.json", "[" + ",".join(rows) + "]")
    return ()


def data_csv_15m(rules: Path, outside: Path) -> tuple[str, ...]:
    """A big legitimate CSV file: under both limits (about 15 MB, 480,000 fields)."""
    _write(rules, "data/table2.csv", "user,topic\n" + "".join(f"{'u' * 30}{i},{'t' * 26}{i}\n" for i in range(240_000)))
    return ()


def data_yaml_2m(rules: Path, outside: Path) -> tuple[str, ...]:
    """A legitimate 2.2 MB YAML file."""
    _write(rules, "data/people.yaml",
           "".join(f"user{i}:\n  name: n{i}\n  topics: [a/{i}, b/{i}]\n" for i in range(50_000)))
    return ()


#: name -> maker, in the order they are saved
CATALOGUE: dict[str, Maker] = {f.__name__: f for f in (
    data_link_outside, library_dir_link_outside, rule_link_outside, data_fifo, data_dev_zero, data_socket,
    data_directory, data_dangling_link, library_fifo, data_sparse_2g, rule_sparse, data_huge_int_json,
    data_huge_int_yaml, data_huge_int_big_json, rule_huge_int, data_broken_yaml_2m, data_deep_json,
    data_deep_big_json, data_csv_16m_tiny_rows, data_csv_one_long_line, data_json_tiny_objects,
    data_yaml_many_nodes, data_yaml_alias_bomb, data_not_utf8, rule_over_limit, rule_at_limit, library_at_limit, library_diamond, library_slow_top_level,
    data_json_15m, data_csv_15m, data_yaml_2m,
)}


def make_unreadable(kind: str, target: Path, outside_file: Path, too_big: int) -> None:
    """Make `target` a file of a kind no reader of the rules directory may read: a FIFO, a link to
    /dev/zero, a directory, a socket, a link to `outside_file`, or a sparse file of `too_big` bytes.
    Any other kind: nothing (the caller makes those its own way)."""
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", target)
    elif kind == "directory":
        target.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(target))
        sock.close()
    elif kind == "outside_link":
        os.symlink(outside_file, target)
    elif kind == "too_big":
        with open(target, "wb") as f:
            f.truncate(too_big)
