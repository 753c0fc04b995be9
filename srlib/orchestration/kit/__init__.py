"""The GPU kit: paper-scale runs on a borrowed GPU machine, prepared here, run there in a few calls.

The GPU machine (one H200, torch 2.11, Python 3.12, no network, no `../shared`) receives only this
repository's files (tracked + untracked-not-ignored) plus the paths a call carries, 64 MiB in all, hands
back at most 8 files of 16 MiB, and stays warm 30 s between calls. So:

- `srlib kit assemble` (here, `assemble`) fills a git-ignored folder (default `kit/`): the lossless data staged
  in pieces of one call each (`data`, `transport`, `staging`), the SR weights, the `spandrel` wheel, the commit
  and diff of this tree, the queue of runs `results/paper/` lacks on this data (`schedule`), and a partial run's
  checkpoint to resume (`partial`); it prints the window's calls (carry lists, commands).
- `srlib kit probe` (there, an early call) checks the pieces that arrived and measures whether runs share
  the GPU (`probe`, MPS included); `srlib kit run` (the last call, `run`) reassembles and hash-checks the data,
  measures speeds (`speeds`), plans the runs that end within the window's time left, runs them (`pool`:
  `srlib train` processes, under MPS when measured faster and bit-identical) and packs records, predictions,
  sr-quality, the probe table and timings into one archive in `$OUT` (`archive`); a run spanning windows ships
  its checkpoint (`kit ship N`).
- `srlib kit unpack ARCHIVE` (here, `archive`) puts the records into `results/paper/`, from where
  `make report RECORDS=results/paper` builds the book without training.

`common` holds the device tool's limits, the kit's file names, KitError and a job's settings; the command line
(`srlib kit ...`) is srlib/cli/kit.py, which nothing in the kit imports. `srlib kit run --dry-run` does the
training call on a CPU with smoke-sized settings (tested in CI).
"""
