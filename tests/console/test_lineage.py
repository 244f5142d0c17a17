"""The model lineage as the console draws it: a run of rounds is one column, a fork indents."""

from __future__ import annotations

from coordinator.console.models import MAX_DEPTH, lineage_rows
from storage.models import ModelVersion


def _v(vid: int, parent: int | None) -> ModelVersion:
    return ModelVersion(id=vid, parent_id=parent, metrics={}, manifest={})


def test_a_fork_indents_and_a_chain_does_not() -> None:
    # 1 -> 2 -> 3, and 2 -> 4 -> 5 (a rollback to 2, then new rounds); 6 registered on its own.
    rows = lineage_rows([_v(1, None), _v(2, 1), _v(3, 2), _v(4, 2), _v(5, 4), _v(6, None)])
    assert [(r.version.id, r.depth, r.branch) for r in rows] == [
        (1, 0, False), (2, 0, False), (3, 1, True), (4, 1, True), (5, 1, False), (6, 0, False)]


def test_thousands_of_rounds_do_not_exhaust_the_stack() -> None:
    chain = [_v(1, None)] + [_v(i, i - 1) for i in range(2, 5001)]
    rows = lineage_rows(chain)
    assert [r.version.id for r in rows] == list(range(1, 5001)) and {r.depth for r in rows} == {0}
    # Forks at every step cap the indent.
    forks = [_v(1, None)] + [_v(i, i // 2) for i in range(2, 2000)]
    assert max(r.depth for r in lineage_rows(forks)) == MAX_DEPTH
