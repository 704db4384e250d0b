"""What every benchmark prints: the machine it ran on and its tables (rich or markdown)."""

from __future__ import annotations

import os
import platform


def cpu() -> str:
    """CPU model and the number of cores this process may use."""
    name = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


def print_table(title: str, header: list[str], rows: list[list[str]], markdown: bool) -> None:
    """A table with the first column left-aligned and the figures right-aligned."""
    if markdown:
        print(f"\n**{title}**\n")
        print("| " + " | ".join(header) + " |")
        print("| " + " | ".join(["---"] + ["--:"] * (len(header) - 1)) + " |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
