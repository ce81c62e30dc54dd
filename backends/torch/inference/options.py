"""How the MoE layers of an inference model execute (one object, shared by every layer of the model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from locmoe.inference.errors import InferenceError
from locmoe.inference.pipeline_plan import ORDERS
from locmoe.inference.profile import DeviceProfile

MODES = ("plain", "chunked", "pipelined")
KERNEL_OPTIONS = ("auto", "grouped", "dense")


@dataclass
class ServeOptions:
    """
    Attributes:
        mode: plain (one chunk), chunked (n chunks, one stage after another) or pipelined (n chunks, the
            all-to-alls overlapped with expert compute: a separate CUDA stream, async collectives on CPU).
        chunks: chunk count; 0 = from the cost model (needs ``profile``). Ignored by plain.
        kernel: expert kernel; auto = per chunk from the cost model (grouped without a profile).
        order: pipeline order (see locmoe.inference.pipeline_plan); auto = the cost model's choice.
        profile: the device's calibration profile.
        record: keep a per-layer record of each call (loads, chunks, kernels, predicted time).
        timeline: also time every stage of every chunk (events on CUDA; costs a sync when read).
    """

    mode: str = "pipelined"
    chunks: int = 0
    kernel: str = "auto"
    order: str = "auto"
    profile: Optional[DeviceProfile] = None
    record: bool = False
    timeline: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise InferenceError(f"mode {self.mode!r} is not one of {MODES}")
        if self.kernel not in KERNEL_OPTIONS:
            raise InferenceError(f"kernel {self.kernel!r} is not one of {KERNEL_OPTIONS}")
        if self.order not in ("auto", *ORDERS):
            raise InferenceError(f"order {self.order!r} is not one of {('auto', *ORDERS)}")
        if self.chunks < 0:
            raise InferenceError(f"chunks = {self.chunks}; use 0 (from the cost model) or a positive count")
        if self.mode != "plain" and self.chunks == 0 and self.profile is None:
            raise InferenceError(
                f"mode {self.mode!r} with chunks = 0 picks the chunk count from a calibration "
                "profile: pass one (`locmoe bench calibrate`) or a fixed chunk count"
            )

    @property
    def overlap(self) -> bool:
        return self.mode == "pipelined"
