"""The GPU kit: paper-scale runs on a remote GPU machine, prepared here, run there in a few commands.

The machine it was built for (one H200, torch 2.11, Python 3.12, no network, no `../shared`) takes little per command
and gives little back (kit.layout), keeping its files 30 s between commands: hence data in one-command pieces and
results in one archive.

- here, `srlib kit assemble` (`assemble`) fills a git-ignored folder (default `kit/`) with the lossless data in pieces
  (`dataset_pieces`, `transport`, `staging`), the SR weights, the `spandrel` wheel, this tree's commit and diff, the
  queue of runs `results/paper/` lacks (`schedule`) and a partial run's checkpoint (`partial`); it prints the commands;
- there, `srlib kit probe` checks the pieces and measures whether runs share the GPU (`probe`); `srlib kit run` (`run`)
  reassembles the data, measures speeds (`speeds`), runs what ends in the time left (`pool`) and packs the results
  into OUT (`archive`); `srlib kit ship N` brings back the rest of a spanning run's checkpoint;
- here, `srlib kit unpack ARCHIVE` puts the records into `results/paper/` for `make report RECORDS=results/paper`.

`job` holds a job's budget and settings. Nothing in the kit imports its command line (srlib/cli/kit.py).
"""
