"""How a secure round's update is flattened: its F32 update spec, tensor names sorted, the strategy's
moments in the statistics group, and in a weighted round the weight's coordinate last."""

from __future__ import annotations

from coordinator.services import models as model_service
from coordinator.strategies import Strategy
from fedface_common.secagg.messages import MASKED_INPUT_TENSOR
from fedface_common.secagg.task import LayoutEntry, layout_of, vector_length
from fedface_common.tensors import TensorInfo, TensorSpec
from storage.models import ModelVersion


def round_layout(strategy: Strategy, version: ModelVersion) -> list[LayoutEntry]:
    spec = model_service.update_spec(strategy, version)
    settings = strategy.params.secagg
    return layout_of({name: info.shape for name, info in spec.items()}, strategy.statistics_tensors(),
                     weighted=settings is not None and settings.max_weight is not None)


def masked_wire_spec(layout: list[LayoutEntry]) -> TensorSpec:
    """What a masked input's body holds: one uint32 vector of the layout's length."""
    return {MASKED_INPUT_TENSOR: TensorInfo("U32", (vector_length(layout),))}
