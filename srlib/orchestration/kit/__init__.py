"""The GPU kit: paper-scale runs on a remote GPU machine, prepared here, run there in a few commands.

The GPU machine it was built for (one H200, torch 2.11, Python 3.12, no network, no `../shared`) gets a copy of
this repository's files plus the kit paths a command needs, 64 MiB in all, gives back at most 8 files of 16 MiB from
its OUT folder, and keeps its files 30 s between commands. So:

- `srlib kit assemble` (here, `assemble`) fills a git-ignored folder (default `kit/`): the lossless data in pieces of
  one command each (`dataset_pieces`, `transport`, `staging`), the SR weights, the `spandrel` wheel, the commit and
  diff of this tree, the queue of runs `results/paper/` lacks (`schedule`) and a partial run's checkpoint
  (`partial`); it prints the session's commands: what to copy there, what to run there.
- `srlib kit probe` (there, an early command) checks the pieces that arrived and measures whether runs share the GPU
  (`probe`); `srlib kit run` (the last command, `run`) reassembles and checks the data, measures speeds (`speeds`),
  schedules the runs that end in the time left, runs them (`pool`) and packs their results into one archive in OUT
  (`archive`); a run spanning sessions ships its checkpoint (`kit ship N`).
- `srlib kit unpack ARCHIVE` (here, `archive`) puts the records into `results/paper/`, from where
  `make report RECORDS=results/paper` builds the book without training.

`layout` holds file names and size limits, `job` a job's budget and settings; the command line is srlib/cli/kit.py,
which nothing in the kit imports. `srlib kit run --dry-run` does the training command on a CPU, smoke-sized.
"""
