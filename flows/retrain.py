"""`retrain`: re-run stages of one block with other settings, started by hand.

    python -m flows.retrain 1 --stages distill --method rd --set train.lr=0.01 --home .ccd
    prefect deployment run 'retrain/retrain' -p block=1 -p method=rd -p 'config={"train": {"lr": 0.01}}'

The stages run under a new run key (`retrain-<UTC time>` unless given), so the stage ledger
keeps the block's earlier records next to the retrain's, and `ccd stages --run-key KEY` shows it.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow

from ccd.config import RunConfig
from ccd.errors import BadInputError
from ccd.home import Home
from ccd.lake import catalog
from flows.options import add_config_options, config_parameter
from flows.process_block import PIPELINE, update_teacher
from flows.tasks import distill_student, publish_student

# Stages a retrain can re-run; a block's data is replaced with `ccd ingest --replace` instead.
RETRAINABLE = tuple(stage for stage in PIPELINE if stage != "ingest")


@flow(name="retrain", flow_run_name="retrain block {block}", log_prints=True)
def retrain(
    block: int,
    stages: list[str] | None = None,
    method: str | None = None,
    config: dict[str, Any] | None = None,
    home: str | None = None,
    run_key: str | None = None,
) -> dict[str, Any]:
    """Re-run `stages` (default: all retrainable) of ingested block `block` under a new run key.

    `method` is the distillation method (`distill.method`, e.g. "rd"); `config` holds the other
    settings that differ from the defaults, e.g. `{"train": {"lr": 0.01}}` or
    `{"teacher": {"members": ["lightgcn:128x2"]}}`. The teacher is retrained from scratch
    (members too, even where saved ones match) and replaces the block's teacher files; the
    student goes to `models/block=K/student-<method>/`. Returns the run key and each stage's
    outputs.
    """
    stages = list(stages or RETRAINABLE)
    unknown = sorted(set(stages) - set(RETRAINABLE))
    if unknown:
        raise BadInputError(f"cannot retrain stage(s) {', '.join(unknown)}: choose from {', '.join(RETRAINABLE)}")
    values = dict(config or {})
    if method is not None:
        values["distill"] = {**values.get("distill", {}), "method": method}
    where, cfg = Home.resolve(home), RunConfig.from_dict(values)
    key = run_key or f"retrain-{catalog.utc_now():%Y%m%dT%H%M%S}"
    print(f"retraining {', '.join(stages)} of block {block} under run key {key}")
    outputs: dict[str, Any] = {"run_key": key}
    if "teacher" in stages:
        outputs["teacher"] = update_teacher(where, block, cfg, key, retrain=True)
    if "distill" in stages:
        outputs["distill"] = distill_student(where, block, cfg, key)
        publish_student(block, outputs["distill"])
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=retrain.__doc__.splitlines()[0])
    parser.add_argument("block", type=int)
    parser.add_argument("--stages", default=",".join(RETRAINABLE), help="comma-separated stages")
    parser.add_argument("--method", default=None, help="distillation method (default: config distill.method)")
    parser.add_argument("--run-key", default=None)
    add_config_options(parser)
    args = parser.parse_args()
    retrain(args.block, args.stages.split(","), args.method, config_parameter(args), args.home, args.run_key)


if __name__ == "__main__":
    main()
