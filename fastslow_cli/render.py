"""Human-readable rendering of results (rich, on stderr). The core never prints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from fastslow_cli.console import err_console

if TYPE_CHECKING:
    from fastslow_cli.extract import ExtractSummary


def render_extract_summary(summary: ExtractSummary) -> None:
    """One table: what was found, stored, skipped and what failed (and where that is logged)."""
    table = Table(title=f"extract: feature set '{summary.set_name}'", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("media files found", str(summary.found))
    table.add_row("extracted", str(summary.extracted))
    table.add_row("reused (renamed or touched files)", str(summary.reused))
    table.add_row("already stored, skipped", str(summary.skipped_existing))
    table.add_row("failed", f"[red]{len(summary.failed)}[/]" if summary.failed else "0")
    table.add_row("seconds", f"{summary.seconds:.1f}")
    err_console.print(table)
    if summary.failed:
        err_console.print(
            f"{len(summary.failed)} file(s) could not be decoded; reasons are in "
            f"{summary.store_dir}/errors.jsonl. Fix or remove them and rerun to add them.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
