"""Where the continual loop keeps what a later block needs, per method, block and run key.

    layout = Layout(home, "ccd")                # run key "default"
    layout.model_dir(3, "student")              # models/ccd/block=3/student/
    layout.topk_dir(3)                          # lake/teacher/ccd/block=3/
    layout.outputs(2, "distill")                # what stage "ccd-distill" of block 2 recorded

- Models (`ccd.models.io` folders): `models/<method>/block=K/<name>/`: `student` (the served
  D_k), `updated-student` (CL_k), `proxy-s` / `proxy-p` (S_{k-1}, P_{k-1}, the proxies used
  at block k) and `teacher-<member>`.
- Teacher top-K lists: `lake/teacher/<method>/block=K/{user,item}_topk.parquet`.
- Reports: `reports/stream/<method>/metrics.json` and `hmean.png`.

Block 0 is the same for every method (teacher members, ensemble, first student D_0), so it is
computed once per home under the method name "base"; its teacher members are the ones
`ccd.teacher.train_member` keeps in `models/block=0/teacher-<member>/`.

Stages are recorded in the stage ledger (`ccd.stages`) as `<method>-<stage>` of block K. A
retrain under another run key writes under `.../block=K/run=<key>/` and records its stages
under that key, so it never overwrites the default run's artifacts; it reads what it builds on
(earlier blocks) from its own key first, then from "default".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccd.errors import CcdError
from ccd.home import Home, block_number, safe_name
from ccd.stages import DEFAULT_RUN_KEY, done_outputs

BASE = "base"
METHODS = ("ccd", "finetune", "retrain", "kd", "lwckd-student")


def keyed(folder: Path, run_key: str) -> Path:
    """`folder` for the default run, `folder/run=<key>` for a run under another key."""
    return folder if run_key == DEFAULT_RUN_KEY else folder / f"run={run_key}"


@dataclass(frozen=True)
class Layout:
    """Paths and stage names of one method's run over the stream."""

    home: Home
    method: str
    run_key: str = DEFAULT_RUN_KEY

    def __post_init__(self) -> None:
        safe_name(self.method, "method")
        safe_name(self.run_key, "run key")

    def _under(self, root: Path, block: int) -> Path:
        return keyed(root / f"block={block_number(block)}", self.run_key)

    def model_dir(self, block: int, name: str) -> Path:
        """Folder of model `name` (e.g. "student", "teacher-bpr-0") after `block`."""
        return self._under(self.home.models / self.method, block) / safe_name(name, "model name")

    def topk_dir(self, block: int) -> Path:
        """Folder of the teacher ensemble's top-K lists after `block`."""
        return self._under(self.home.lake / "teacher" / self.method, block)

    @property
    def report_dir(self) -> Path:
        return keyed(self.home.reports / "stream" / self.method, self.run_key)

    def stage(self, name: str) -> str:
        """Ledger name of a stage of this method, e.g. "ccd-student-update"."""
        return f"{self.method}-{name}"

    @property
    def run_keys(self) -> tuple[str, ...]:
        """Keys whose records this run reads: its own, then the default run's."""
        return (self.run_key,) if self.run_key == DEFAULT_RUN_KEY else (self.run_key, DEFAULT_RUN_KEY)

    def outputs(self, block: int, name: str) -> dict[str, Any]:
        """What stage `name` of `block` recorded, under this run's key or else the default's."""
        found = done_outputs(self.home, block, self.stage(name), self.run_keys)
        if found is None:
            raise CcdError(
                f"stage {self.stage(name)} of block {block} has not finished (run key {self.run_key!r}): "
                f"run ccd stream --method {self.method} over the earlier blocks first"
            )
        return found

    def relative(self, path: Path) -> str:
        """`path` relative to the home folder (`Home.relative`)."""
        return self.home.relative(path)

    def base(self) -> "Layout":
        """The layout of the shared block 0 under the same run key."""
        return Layout(self.home, BASE, self.run_key)
