"""What a model file says about itself, so that whoever loads it (the
coordinator, a phone, an evaluation script) feeds it the same crops it was
trained on. Stored as JSON in the safetensors metadata (`fedface.manifest`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedface_common.face.model import MobileFaceNet

MANIFEST_VERSION = 1


class ModelManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = MANIFEST_VERSION
    architecture: Literal["mobilefacenet"] = "mobilefacenet"
    width: float = Field(default=1.0, ge=0.1, le=4.0, description="Channel width multiplier")
    input_size: int = Field(default=112, ge=16, le=512, description="Side of the square input crop, pixels")
    embedding_dim: int = Field(default=128, ge=16, le=1024)
    # Pixel p in [0, 255] becomes (p / 255 - mean) / std, per channel in colour_order.
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    colour_order: Literal["RGB", "BGR"] = "RGB"
    alignment: Literal["5pt-arcface"] = "5pt-arcface"
    # Free-form provenance (training data, epochs, ...); never needed to run the model.
    notes: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> ModelManifest:
        return cls.model_validate_json(raw)

    def build(self) -> MobileFaceNet:
        """A freshly initialised model of this shape."""
        return MobileFaceNet(width=self.width, input_size=self.input_size, embedding_dim=self.embedding_dim)
