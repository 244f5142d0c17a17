"""(k, t) for a round of n devices: the statistical rule of `graph.choose_parameters`, or the complete graph
with a majority threshold where no sparse graph meets its targets (small rounds, high dropout). The
complete graph is the original SecAgg (Bonawitz et al., CCS 2017): every pair of devices masks, so the
server learns only the sum of the survivors as long as it reconstructs no device's two secrets, which the
devices' one-kind-per-neighbour rule prevents."""

from __future__ import annotations

from fedface_common.secagg import graph


def neighbours_and_threshold(n: int, dropout: float) -> tuple[int, int, str]:
    """(k, t, which rule chose them: "sparse" or "complete")."""
    try:
        k, t = graph.choose_parameters(n, dropout)
        return k, t, "sparse"
    except ValueError:
        return n - 1, (n - 1) // 2 + 1, "complete"
