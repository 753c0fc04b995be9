"""The orchestration: what runs the study's runs, and never imported by the research path it drives.

- `request` (what to run, where, how: one `SweepRequest`), `preflight` (checks and the plan, times from
  srlib.cost), `sweep` (tasks, the one wait loop, finishing: analysis notebooks and the book stage, `book`);
- `executors` (one interface, local and Slurm; process-group kills), `tasks` (a notebook run in a worker,
  job.json), `states` (done / running / queued / failed), `local` (worker slots), `slurm` (request check, submit,
  queue reasons), `reporter` (the live line and its ETA);
- `kit/`: paper-scale runs on a remote GPU machine (assemble, probe, schedule, run, archive, staging).
"""
