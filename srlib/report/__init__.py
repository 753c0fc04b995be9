"""The report: run records -> checked records -> tables, statistics in words, figures (never trains).

The notebooks in notebooks/ import the modules they call; srlib.orchestration.book builds the book from them.
"""
