"""One definition of what devices read from a round's parameters, used by both sides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from coordinator.strategies import STRATEGIES, make_strategy
from coordinator.strategies.base import StrategyConfigError
from fedface_common.client_params import (
    CLIENT_PARAMS,
    PositiveLossClientParams,
    PrivateClientParams,
    parse_client_params,
)


@pytest.mark.parametrize("algorithm", sorted(STRATEGIES))
def test_the_server_sends_exactly_the_client_model_with_its_defaults(algorithm: str) -> None:
    model = CLIENT_PARAMS[algorithm]
    sent = make_strategy(algorithm).client_params()
    assert set(sent) == set(model.model_fields)
    assert parse_client_params(algorithm, sent) == model()


def test_a_documented_device_setting_can_be_set_per_round() -> None:
    sent = make_strategy("fedface", {"max_grad_norm": 0.5, "margin": 0.8}).client_params()
    params = parse_client_params("fedface", sent)
    assert isinstance(params, PositiveLossClientParams)
    assert params.max_grad_norm == 0.5 and params.margin == 0.8


def test_server_only_settings_stay_on_the_server() -> None:
    sent = make_strategy("fedface", {"server_lr": 2.0, "tau": 0.5, "embedding_lda_shrinkage": 0.2}).client_params()
    assert not {"server_lr", "tau", "embedding_lda_shrinkage", "robust", "dp"} & set(sent)


def test_the_agent_ignores_fields_it_does_not_know_and_validates_those_it_does() -> None:
    params = parse_client_params("fedface-private", {"k_negatives": 8, "a_newer_setting": 1})
    assert isinstance(params, PrivateClientParams) and params.k_negatives == 8
    with pytest.raises(ValidationError):
        parse_client_params("fedface-private", {"k_negatives": 0})


def test_both_sides_refuse_the_same_bad_value() -> None:
    with pytest.raises(StrategyConfigError, match="max_grad_norm"):
        make_strategy("fedavg", {"max_grad_norm": -1})
    with pytest.raises(ValidationError, match="max_grad_norm"):
        parse_client_params("fedavg", {"max_grad_norm": -1})
