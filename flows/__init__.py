"""Prefect flows over the `ccd` library: thin, each task calls one `ccd` function.

- `process_block`: one block through ingest → validate → the CCD loop's stages (student update,
  teacher members in parallel, ensemble, distillation, evaluation, registration), resumable
  through the stage ledger (`ccd.stages`);
- `stream_ingest`: new blocks of a landing folder, in order; a rejected block stops the stream;
- `backfill`: a whole folder of blocks from scratch, then the ops dashboard;
- `retrain`: chosen stages of one block again, with other settings, under a new run key.

Deployments and schedules are in `prefect.yaml`; where tasks run is `flows.runners.task_runner`.
Each flow module runs on its own: `python -m flows.backfill data/sample --home .ccd`.
"""
