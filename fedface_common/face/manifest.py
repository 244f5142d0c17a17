"""What a model file says about itself, so that whoever loads it (the
coordinator, a phone, an evaluation script) feeds it the same crops it was
trained on. Stored as JSON in the safetensors metadata (`fedface.manifest`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from fedface_common.face import model as mobilefacenet
from fedface_common.face import resnet29

Architecture = Literal["mobilefacenet", "dlib-resnet29"]
Alignment = Literal["5pt-arcface", "5pt-dlib"]

MANIFEST_VERSION = 1


class ModelManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = MANIFEST_VERSION
    architecture: Architecture = "mobilefacenet"
    width: float = Field(default=1.0, ge=0.1, le=4.0, description="Channel width multiplier (MobileFaceNet)")
    input_size: int = Field(default=112, ge=16, le=512, description="Side of the square input crop, pixels")
    embedding_dim: int = Field(default=128, ge=16, le=1024)
    # Pixel p in [0, 255] becomes (p / 255 - mean) / std, per channel in colour_order.
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    colour_order: Literal["RGB", "BGR"] = "RGB"
    # The 5-point template the crops are warped to (fedface_common.face.align.TEMPLATES).
    alignment: Alignment = "5pt-arcface"
    # Cosine thresholds for a yes/no decision, keyed by the false accept rate they were
    # calibrated for ("0.001": ...), measured on the development images (`fedface verify`).
    thresholds: dict[str, float] = Field(default_factory=dict)
    # Free-form provenance (training data, source package, licence, ...); never needed to run the model.
    notes: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fixed_shape(self) -> ModelManifest:
        if self.architecture == resnet29.ARCHITECTURE and (
            self.input_size != resnet29.INPUT_SIZE or self.embedding_dim != resnet29.EMBEDDING_DIM
        ):
            raise ValueError(f"{resnet29.ARCHITECTURE} takes {resnet29.INPUT_SIZE} px crops and has "
                             f"{resnet29.EMBEDDING_DIM}-d embeddings")
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> ModelManifest:
        return cls.model_validate_json(raw)

    def build(self) -> nn.Module:
        """A freshly initialised model of this architecture and shape. Every architecture's
        `forward` returns L2-normalised embeddings and `features` the raw ones."""
        if self.architecture == resnet29.ARCHITECTURE:
            return resnet29.DlibResNet29()
        return mobilefacenet.MobileFaceNet(width=self.width, input_size=self.input_size,
                                           embedding_dim=self.embedding_dim)
