"""The report: run records -> checked records -> tables, statistics in words, figures (never trains).

`record_checks` reads and checks records (one dataset a page), `comparisons` pairs the variants and holds
their statistics (srlib.statistics), `analysis` makes the tables, `formats` writes the numbers,
`report_text` the sentences and verdicts, `figures` the plots; `where_sr_helps`, `cost_report` and
`reference` are the sections of those names. The notebooks in notebooks/ import the modules they call;
the orchestration's book stage (srlib.orchestration.book) builds the book from the executed notebooks.
"""
