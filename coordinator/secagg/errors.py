"""Typed errors of the server's SecAgg+ stages, each with a stable `code` for problem documents."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from fedface_common.secagg.messages import ShareKind


class SecAggProtocolError(Exception):
    """A secure-aggregation stage cannot go on as asked. `code` is stable, for problem documents."""

    code: ClassVar[str] = "secagg_error"


class NotInStage(SecAggProtocolError):
    """The sender is not expected at this stage (not in the round, or dropped at an earlier stage)."""

    code = "secagg_not_in_stage"


class DuplicateMessage(SecAggProtocolError):
    """A second, different message from one device in one stage."""

    code = "secagg_duplicate_message"


class InvalidMessage(SecAggProtocolError):
    """A well-formed message that breaks the protocol (wrong recipients, wrong share kind, ...)."""

    code = "secagg_invalid_message"


class NotEnoughSurvivors(SecAggProtocolError):
    code = "secagg_not_enough_survivors"

    def __init__(self, stage: str, have: int, need: int) -> None:
        super().__init__(f"{have} devices survived {stage}, {need} needed")
        self.stage, self.have, self.need = stage, have, need


class SurvivorsDisconnected(SecAggProtocolError):
    """The graph on the devices whose input is in the sum falls apart: unmasking would hand the server the
    sum of each part separately (a part of one device is that device's input), so it is not done."""

    code = "secagg_survivors_disconnected"


class NotEnoughShares(SecAggProtocolError):
    """Some secret the unmasking needs has fewer than t shares: the sum cannot be recovered."""

    code = "secagg_not_enough_shares"

    def __init__(self, deficits: list[ShareDeficit], threshold: int) -> None:
        worst = ", ".join(f"{d.owner} ({d.kind}: {d.have})" for d in deficits[:5])
        super().__init__(f"{len(deficits)} secrets have fewer than {threshold} shares: {worst}")
        self.deficits, self.threshold = deficits, threshold


class ReconstructionFailed(SecAggProtocolError):
    """The shares of a secret disagree, or a masking key does not match the public key it advertised."""

    code = "secagg_reconstruction_failed"


class ShareDeficit(BaseModel):
    owner: str
    kind: ShareKind
    have: int
