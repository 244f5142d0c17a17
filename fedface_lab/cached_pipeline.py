"""The device's face pipeline for simulated devices, with the lab's crop cache.

A simulation enrolls up to 1,012 devices, and a bench runs a dozen simulations:
detecting faces in every device's photos each time would cost more than the
training. Simulated devices therefore take their crops from the same cache the
evaluation and the centralized baseline use (fedface_lab.datasets.load_crop),
cut by the same detector and warp a device runs, choosing the face nearest the
photo's centre (LFW's photos are centred on their subject)."""

from __future__ import annotations

from pathlib import Path

from device_agent.photos.load import SkipReason
from device_agent.photos.pipeline import Face, FaceInfo, FacePipeline, Result, Skip
from fedface_common.face.align import TemplateName
from fedface_lab.datasets import CropCache, load_crop


class CachedDetectPipeline(FacePipeline):
    def __init__(self, size: int, alignment: TemplateName, cache: CropCache | None = None) -> None:
        # "aligned" only keeps the base class from loading a detector of its own: load_crop has one.
        super().__init__(size, "aligned", alignment=alignment, pick="central")
        self.cache = cache or CropCache()

    def process(self, path: str | Path) -> Result:
        path = Path(path)
        try:
            crop = load_crop(path, "detect", self.size, self.cache, alignment=self.alignment)
        except OSError as exc:
            return Skip(path, SkipReason.NOT_AN_IMAGE, str(exc))
        return Face(path, crop, FaceInfo(faces=None, several=False))

    def for_template(self, size: int, alignment: TemplateName) -> FacePipeline:
        if (size, alignment) == (self.size, self.alignment):
            return self
        return CachedDetectPipeline(size, alignment, self.cache)
