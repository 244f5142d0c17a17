"""A rich progress bar that can be switched off (tests, non-interactive runs)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class LossColumn(ProgressColumn):
    """Running loss, for tasks that carry a `loss` field (training epochs)."""

    def render(self, task: Task) -> Text:
        loss = task.fields.get("loss")
        return Text("" if loss is None else f"loss {loss:.3f}", style="cyan")


def make_progress(enabled: bool = True) -> Progress:
    """Use as a context manager."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        LossColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
