"""The protocol's refusals as problem documents, each under the protocol's own stable code."""

from __future__ import annotations

from coordinator.errors import Conflict, FedFaceError
from coordinator.secagg.errors import DuplicateMessage, NotInStage, SecAggProtocolError


class WrongStage(Conflict):
    code, title = "secagg_wrong_stage", "The secure round is not at this stage"


class NotSecure(Conflict):
    code, title = "secagg_not_enabled", "This round does not run secure aggregation"


class SecAggRefused(FedFaceError):
    """Any other refusal of the protocol: 409 for a message out of turn, 422 for one that breaks it."""

    title = "Secure aggregation refused the message"

    def __init__(self, exc: SecAggProtocolError) -> None:
        super().__init__(str(exc))
        self.code = exc.code
        self.status = 409 if isinstance(exc, DuplicateMessage | NotInStage) else 422
