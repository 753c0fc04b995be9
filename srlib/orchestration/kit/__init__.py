"""The GPU kit: paper-scale runs on a remote GPU machine, prepared here, run there in a few commands.

The machine it was built for (one H200, torch 2.11, Python 3.12, no network, no `../shared`) gets a copy of this
repository's files plus the kit paths a command needs (64 MiB in all), gives back at most 8 files of 16 MiB from its
OUT folder and keeps its files 30 s between commands: hence data in one-command pieces and results in one archive.

- here, `srlib kit assemble` (`assemble`) fills a git-ignored folder (default `kit/`) with the lossless data in pieces
  (`dataset_pieces`, `transport`, `staging`), the SR weights, the `spandrel` wheel, this tree's commit and diff, the
  queue of runs `results/paper/` lacks (`schedule`) and a partial run's checkpoint (`partial`); it prints the commands;
- there, `srlib kit probe` checks the pieces and measures whether runs share the GPU (`probe`); `srlib kit run` (`run`)
  reassembles the data, measures speeds (`speeds`), runs what ends in the time left (`pool`) and packs the results
  into one archive in OUT (`archive`); a run spanning sessions ships its checkpoint (`kit ship N`);
- here, `srlib kit unpack ARCHIVE` puts the records into `results/paper/` for `make report RECORDS=results/paper`.

`layout` holds file names and size limits, `job` a job's budget and settings. The command line (srlib/cli/kit.py) is
imported by nothing in the kit; `srlib kit run --dry-run` does the training command on a CPU, smoke-sized.
"""
