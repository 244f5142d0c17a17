"""`fedface privacy`: the epsilon and noise calculator, against the accountant it prints."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from coordinator.privacy import accountant
from fedface_cli.main import app


def test_the_calculator_commands() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["privacy", "epsilon", "-n", "1012", "-m", "50", "-r", "5", "-z", "1", "-z", "2",
                              "--dim", "10000", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [r["noise_multiplier"] for r in rows] == [1.0, 2.0]
    assert rows[0]["epsilon"] == pytest.approx(accountant.epsilon_for(1012, 50, 5, 1.0, 1e-5))
    assert rows[1]["noise_norm_on_mean_over_clip"] == pytest.approx(2.0 * 100 / 50)
    out = runner.invoke(app, ["privacy", "noise", "-n", "1012", "-m", "50", "-r", "5", "-e", "4", "--json"])
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.stdout)
    assert row["epsilon"] <= 4.0 and row["noise_multiplier"] == pytest.approx(0.7212, abs=1e-3)
    table = runner.invoke(app, ["privacy", "epsilon", "-n", "1012", "-m", "50", "-r", "5", "-z", "1"],
                          env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "1.92" in table.stdout
