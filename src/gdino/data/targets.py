"""What a training image's annotations become: boxes plus the prompt tokens each box is grounded to."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class Target:
    """Annotations of one training image, aligned with its (augmented) pixels and its prompt.

    Attributes:
        boxes: ``[N, 4]`` float cxcywh, normalized to the unpadded augmented image.
        token_map: ``[N, max_text_len]`` bool: the prompt tokens of each box's class or phrase.
        labels: ``[N]`` long: index of each box's class/phrase in ``phrases``.
        phrases: the prompt's classes or phrases, in prompt order.
        caption: the prompt text the token maps refer to.
        image_id: dataset image id.
        size: ``(height, width)`` of the augmented, unpadded image.
        orig_size: ``(height, width)`` of the original image.
    """

    boxes: Tensor
    token_map: Tensor
    labels: Tensor
    phrases: list[str] = field(default_factory=list)
    caption: str = ""
    image_id: int = 0
    size: tuple[int, int] = (0, 0)
    orig_size: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4) or self.token_map.shape[0] != n or self.labels.shape != (n,):
            raise ValueError(
                f"Target: boxes {tuple(self.boxes.shape)}, token_map {tuple(self.token_map.shape)} and "
                f"labels {tuple(self.labels.shape)} disagree"
            )

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Target:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking and t.device.type == "cpu")  # a read back must wait

        return replace(self, boxes=move(self.boxes), token_map=move(self.token_map), labels=move(self.labels))
