"""The verdict on one block: its checks, a status, and renderings for people and machines.

`ccd.lake.validate` fills a `ValidationReport`; this module only holds and renders it. The HTML
is self-contained (inline CSS, no scripts, no links) because Great Expectations' own data docs
load their styling from the internet, and reports here must open on an offline machine.
"""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass
from typing import Any

@dataclass(frozen=True)
class CheckResult:
    """One check of a block and how it went.

    Attributes
    ----------
    name : str
        What is checked, e.g. "no null user_id" or "unique (user_id, item_id)".
    expectation : str
        The Great Expectations expectation type that ran it, e.g. "expect_column_values_to_not_be_null".
    severity : str
        "error" (a failure rejects the block) or "warning" (reported, the block is kept).
    success : bool
        Whether the block met the expectation. A check that could not run because a required
        column is missing counts as failed.
    details : str
        One short line: counts and at most a few examples of bad values with their 0-based rows.
    """

    name: str
    expectation: str
    severity: str
    success: bool
    details: str


@dataclass(frozen=True)
class ValidationReport:
    """All checks of one block and the resulting status.

    Attributes
    ----------
    block : int
        Block number k.
    status : str
        "rejected" if an error-severity check failed, else "warning" if a warning-severity check
        failed, else "passed".
    checks : tuple of CheckResult
        Every check, in a fixed order, whether it passed, failed or did not apply.
    rows_in, rows_out : int
        Rows read, and rows left after dropping duplicate (user_id, item_id) pairs.
    duplicates_dropped : int
        rows_in - rows_out (non-zero only under duplicate_policy "drop").
    """

    block: int
    status: str
    checks: tuple[CheckResult, ...]
    rows_in: int
    rows_out: int
    duplicates_dropped: int

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        """Failed checks, errors first, in check order otherwise."""
        failures = [c for c in self.checks if not c.success]
        return tuple(sorted(failures, key=lambda c: c.severity != "error"))

    def summary(self) -> str:
        """One line: the status and, if something failed, which checks and the first one's details."""
        head = f"block {self.block} {self.status}"
        if not self.failed:
            return f"{head}: {len(self.checks)} checks passed on {self.rows_in} rows"
        names = ", ".join(c.name for c in self.failed)
        first = self.failed[0]
        return _one_line(f"{head}: failed {names} ({first.name}: {first.details})")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form (what the catalog stores and `--json` prints)."""
        payload = dataclasses.asdict(self)
        payload["checks"] = [dataclasses.asdict(c) for c in self.checks]
        payload["summary"] = self.summary()
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "ValidationReport":
        """Inverse of `to_dict` (the `summary` key is derived, so it is ignored)."""
        checks = tuple(CheckResult(**c) for c in payload["checks"])
        fields = {f.name for f in dataclasses.fields(cls)} - {"checks"}
        return cls(checks=checks, **{k: payload[k] for k in fields})

    def to_markdown(self) -> str:
        """A readable report: status, row counts and a table of checks."""
        lines = [
            f"# Validation of block {self.block}: {self.status}",
            "",
            self.summary(),
            "",
            f"- rows in: {self.rows_in}",
            f"- rows out: {self.rows_out}",
            f"- duplicates dropped: {self.duplicates_dropped}",
            "",
            "| check | result | severity | expectation | details |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            cells = [c.name, _verdict(c), c.severity, f"`{c.expectation}`", c.details]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """The same content as `to_markdown` as one self-contained HTML page."""
        esc = html.escape
        rows = "\n".join(
            f'<tr class="{_verdict(c)}"><td>{esc(c.name)}</td><td>{_verdict(c)}</td>'
            f"<td>{esc(c.severity)}</td><td><code>{esc(c.expectation)}</code></td><td>{esc(c.details)}</td></tr>"
            for c in self.checks
        )
        return _PAGE.format(
            block=self.block, status=esc(self.status), summary=esc(self.summary()),
            rows_in=self.rows_in, rows_out=self.rows_out, dropped=self.duplicates_dropped, rows=rows,
        )


def _verdict(check: CheckResult) -> str:
    if check.success:
        return "ok"
    return "failed" if check.severity == "error" else "warning"


def _one_line(text: str) -> str:
    return " ".join(text.split())


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Validation of block {block}: {status}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #eee; }}
tr.failed td {{ background: #fdd; }}
tr.warning td {{ background: #ffd; }}
.status-passed {{ color: #060; }} .status-warning {{ color: #850; }} .status-rejected {{ color: #a00; }}
</style>
</head>
<body>
<h1>Validation of block {block}: <span class="status-{status}">{status}</span></h1>
<p>{summary}</p>
<ul><li>rows in: {rows_in}</li><li>rows out: {rows_out}</li><li>duplicates dropped: {dropped}</li></ul>
<table>
<tr><th>check</th><th>result</th><th>severity</th><th>expectation</th><th>details</th></tr>
{rows}
</table>
</body>
</html>
"""
