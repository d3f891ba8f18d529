"""How `hookrules test` shows its results: text for people, JUnit XML for CI systems (json is built in
tester.run_tests, one dict). Apart from the runner, which only collects CaseResults."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .tester import CaseResult


def write_text(out: TextIO, results: list[CaseResult], failed: list[CaseResult], verbose: bool) -> None:
    for r in results:
        if verbose or not r.passed:
            out.write(f"{r.file}::{r.name} {'PASSED' if r.passed else 'FAILED'}\n")
    if failed:
        out.write("\n" + "=" * 30 + " failures " + "=" * 30 + "\n")
        for r in failed:
            out.write(f"FAILED {r.file}::{r.name}" + (f" (line {r.line})" if r.line else "") + "\n")
            for problem in r.problems:
                out.write(f"    {problem}\n")
            for said in r.logs:
                out.write(f"    log: {said}\n")


def junit_xml(directory: Path, results: list[CaseResult], load_errors: list[str]) -> str:
    """JUnit XML: one testsuite per test table, one testcase per case; a rule file that does not load is a
    testcase of its own that errs, so a CI report cannot show green over a broken rule. Built with
    ElementTree, which escapes whatever a case name or a problem holds."""
    root = ET.Element("testsuites", name=f"hookrules test {directory}")
    by_file: dict[str, list[CaseResult]] = {}
    for r in results:
        by_file.setdefault(r.file, []).append(r)
    if load_errors:
        suite = ET.SubElement(root, "testsuite", name="rule files", tests=str(len(load_errors)), failures="0",
                              errors=str(len(load_errors)))
        for text in load_errors:
            case = ET.SubElement(suite, "testcase", classname="rule files", name=text.splitlines()[0][:200])
            ET.SubElement(case, "error", message="the rule file did not load").text = _xml_text(text)
    for file, cases in by_file.items():
        failures = sum(1 for r in cases if not r.passed)
        suite = ET.SubElement(root, "testsuite", name=file, tests=str(len(cases)), failures=str(failures), errors="0")
        for r in cases:
            case = ET.SubElement(suite, "testcase", classname=file, name=_xml_text(r.name), line=str(r.line or 1))
            if not r.passed:
                failure = ET.SubElement(case, "failure", message=_xml_text(r.problems[0])[:500])
                failure.text = _xml_text("\n".join(r.problems + [f"log: {said}" for said in r.logs]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """XML 1.0 cannot carry every character a string can (control characters, lone surrogates):
    they are shown as \\xNN escapes rather than making a file no CI parser reads."""
    return _XML_ILLEGAL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
