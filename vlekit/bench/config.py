"""What one ``vlekit bench`` run measures: the presets, `BenchConfig` and its validation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlekit.bench.batches import MAX_OBJECTS, TASKS

PRESETS: dict[str, dict[str, str]] = {
    "vle-base": dict(text_encoder="deberta-v3-base-random", vision_encoder="clip-vit-b16-384-random",
                     fusion="co-attention-base"),
    "vle-large": dict(text_encoder="deberta-v3-large-random", vision_encoder="clip-vit-l14-336-random",
                      fusion="co-attention-large"),
    "tiny": dict(text_encoder="tiny-deberta", vision_encoder="tiny-clip", fusion="tiny-co-attention"),
}
MODES = ("train", "infer", "both")
DTYPES = ("bf16", "fp32")


class BenchConfigError(ValueError):
    """The bench options are inconsistent; the message says which and what would be right."""


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines one ``vlekit bench`` run (saved in the JSON output).

    text_encoder / vision_encoder / fusion: registered names (a preset fills them in).
    batch_sizes: questions per step; each is measured, an out-of-memory one is reported as OOM.
    dtype: ``bf16`` (autocast, fp32 master weights) or ``fp32``.
    pad_to: fixed text padding (and truncation) length, like the official 80; ``None`` pads each batch
        to its longest sequence rounded up to a multiple of 8.
    distinct_batches: synthetic batches per batch size, cycled through (their padded lengths differ).
    warmup: untimed steps before timing; at least one per distinct batch is always run, so every
        padded length is compiled / autotuned before the clock starts.
    peak_tflops: the device's bf16 dense peak for MFU; ``None`` looks the device up.
    text_attention: the text encoder's ``attention`` option (``eager``, or ``sdpa``: DeBERTa's
        disentangled attention fused, `vlekit.components.deberta_attention`).
    """

    text_encoder: str
    vision_encoder: str
    fusion: str
    preset: str | None = None
    num_token_types: int = 83
    task: str = "q2a"
    batch_sizes: tuple[int, ...] = (16,)
    dtype: str = "bf16"
    device: str = "cuda"
    compile: bool = False
    gradient_checkpointing: bool = False
    steps: int = 20
    warmup: int = 5
    mode: str = "both"
    pad_to: int | None = None
    distinct_batches: int = 4
    peak_tflops: float | None = None
    profile_dir: str | None = None
    json_path: str | None = None
    seed: int = 0
    text_attention: str = "eager"

    def __post_init__(self) -> None:
        checks = [
            (self.task in TASKS, f"--task must be one of {', '.join(TASKS)}, got {self.task!r}"),
            (self.mode in MODES, f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (len(self.batch_sizes) > 0 and all(b >= 1 for b in self.batch_sizes),
             f"--batch-size needs positive sizes, got {list(self.batch_sizes)}"),
            (self.steps >= 1, f"--steps must be at least 1, got {self.steps}"),
            (self.warmup >= 0, f"--warmup must be 0 or more, got {self.warmup}"),
            (self.distinct_batches >= 1, f"--distinct-batches must be at least 1, got {self.distinct_batches}"),
            (self.pad_to is None or self.pad_to >= 16,
             f"--pad-to {self.pad_to} is too short for a VCR question and choice; use 16 or more (VLE: 80)"),
            (self.peak_tflops is None or self.peak_tflops > 0, f"--peak-tflops must be positive, got {self.peak_tflops}"),
            (self.num_token_types >= 2 + MAX_OBJECTS,
             f"--num-token-types {self.num_token_types} leaves no room for {MAX_OBJECTS} object types (k + 2)"),
        ]
        for ok, message in checks:
            if not ok:
                raise BenchConfigError(message)

    @property
    def modes(self) -> tuple[str, ...]:
        return ("train", "infer") if self.mode == "both" else (self.mode,)

    def component_specs(self, *, gradient_checkpointing: bool) -> dict[str, dict[str, Any]]:
        """``build_model`` keyword arguments for the three components."""
        options = {"gradient_checkpointing": True} if gradient_checkpointing else {}
        return {
            "text_encoder": {"name": self.text_encoder, **options,
                             **({"attention": self.text_attention} if self.text_attention != "eager" else {})},
            "vision_encoder": {"name": self.vision_encoder, **options},
            "fusion": {"name": self.fusion, **options},
        }
