"""One /metrics for a group of worker processes: pure functions over the families of /metrics texts.

Each worker keeps its own metrics in its own process (the lock-free LoopCounter/LoopHistogram
families stay as they are: nothing is added to a call). The supervisor reads every worker's /metrics
text and merges it here:
- counters, histograms and summaries are summed over the workers, plus a retired total: the last
  snapshot of every worker process that has exited, so a restart never makes a counter go backwards;
- every other family (gauges: which rule version a worker serves, its memory) is kept per worker,
  with a `worker` label, because the sum of "1 for the version served" over workers means nothing.
prometheus-client's multiprocess mode would do the summing through files written on every update
(an mmap write per call and label set) and supports neither the lock-free families nor custom
collectors; merging the texts costs the supervisor a few milliseconds per scrape instead.

The texts come from prometheus-client's own writer in processes of one version, so a series is
written the same way by every worker (labels sorted): the text before a sample's value is its key,
and no label needs parsing (prometheus-client's parser took 5 ms per worker text, this a tenth).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

#: family types whose samples add up across processes (anything else is kept per worker)
SUMMED = frozenset({"counter", "histogram", "summary"})
#: the label that tells the workers' own series apart
WORKER_LABEL = "worker"


@dataclass
class Family:
    """One metric family of a /metrics text: its HELP/TYPE lines and its samples, `name{labels}` ->
    value, in the order written."""

    name: str
    type: str = "untyped"
    header: list[str] = field(default_factory=list)
    samples: dict[str, float] = field(default_factory=dict)


#: summed families by name: the retired workers' totals
Totals = dict[str, Family]


def parse(text: str) -> list[Family]:
    """The families of one /metrics text in the Prometheus text format as prometheus-client writes it
    (each family's samples after its # HELP and # TYPE lines; no timestamps). ValueError if it is not."""
    families: list[Family] = []
    current: Family | None = None
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                if current is None or current.name != parts[2]:
                    current = Family(parts[2])
                    families.append(current)
                current.header.append(line)
                if parts[1] == "TYPE" and len(parts) == 4:
                    current.type = parts[3]
            continue
        key, _, value = line.rpartition(" ")
        if current is None or not key:
            raise ValueError(f"not a sample of a declared family: {line[:100]!r}")
        current.samples[key] = float(value)
    return families


def fold(totals: Totals, families: Iterable[Family]) -> Totals:
    """`totals` plus the summed families of one snapshot, as new Totals (neither input changes)."""
    out = {name: Family(f.name, f.type, f.header, dict(f.samples)) for name, f in totals.items()}
    for family in families:
        if family.type not in SUMMED:
            continue
        target = out.get(family.name)
        if target is None:
            target = out[family.name] = Family(family.name, family.type, family.header)
        samples = target.samples
        for key, value in family.samples.items():
            samples[key] = samples.get(key, 0.0) + value
    return out


def with_label(key: str, name: str, value: str) -> str:
    """`metric{a="b"}` -> `metric{a="b",name="value"}` (value already escaped)."""
    if key.endswith("}"):
        return f'{key[:-1]},{name}="{value}"}}' if not key.endswith("{}") else f'{key[:-1]}{name}="{value}"}}'
    return f'{key}{{{name}="{value}"}}'


def merge(retired: Totals, workers: Mapping[str, Iterable[Family]]) -> list[Family]:
    """One set of families for the whole group: summed families are `retired` plus every worker's
    samples; the others are every worker's samples with a `worker` label (its key in `workers`).
    A series' samples (a histogram's buckets, _sum and _count) stay together: every snapshot has all
    of them, so they are first seen, and listed, together."""
    merged: dict[str, Family] = {name: Family(f.name, f.type, f.header, dict(f.samples)) for name, f in retired.items()}
    for worker, families in workers.items():
        for family in families:
            out = merged.get(family.name)
            if out is None:
                out = merged[family.name] = Family(family.name, family.type, family.header)
            samples = out.samples
            if family.type in SUMMED:
                for key, value in family.samples.items():
                    samples[key] = samples.get(key, 0.0) + value
            else:
                for key, value in family.samples.items():
                    samples[with_label(key, WORKER_LABEL, worker)] = value
    return list(merged.values())


def sample_total(families: Iterable[Family], sample_name: str) -> float:
    """The sum of every sample of this name (e.g. all hookrules_request_duration_seconds_count)."""
    return sum(value for family in families for key, value in family.samples.items()
               if key == sample_name or key.startswith(sample_name + "{"))


def render(families: Iterable[Family]) -> bytes:
    """The Prometheus text format of these families."""
    lines: list[str] = []
    for family in families:
        lines += family.header
        lines += [f"{key} {floatToGoString(value)}" for key, value in family.samples.items()]  # type: ignore[no-untyped-call]
    lines.append("")
    return "\n".join(lines).encode()
