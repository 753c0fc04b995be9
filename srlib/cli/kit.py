"""`srlib kit`: paper-scale runs on a borrowed GPU machine (srlib.orchestration.kit)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..orchestration.kit.commands import add_parser  # light: torch only when a kit command runs

    add_parser(sub)
