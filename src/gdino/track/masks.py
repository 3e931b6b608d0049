"""Masks mode: SAM 2's video predictor propagates masks; the detector re-anchors them every N frames.

The video is cut into windows of ``detect_every`` processed frames. For each window:

1. the detector runs on its first frame (the key frame);
2. SAM 2 turns every detection box into a mask on the key frame (box prompts);
3. detections are matched to the live tracks by mask IoU (Hungarian, IoU >= ``match_iou``)
   between the detection's mask and the track's mask on the frame before;
4. a new SAM 2 inference state is made for the window's frames only, with one object per track:
   matched tracks are re-anchored on the key frame with the detection's box, unmatched tracks
   continue from their last mask (a mask prompt), unmatched detections start new tracks;
5. ``propagate_in_video`` gives every object's mask on every frame of the window.

A track ends when its mask vanishes or no detection matches it at ``max_missed`` key frames in
a row (objects that leave). Only one window's frames are ever held (on the CPU, resized to SAM
2's input size), and the inference state is dropped after each window, so memory does not grow
with the video's length. The state carried between windows is small (each live track's id,
label, score and last mask), which is what a resumed job restores.

The SAM 2 calls are the ``sam2`` package's own (``SAM2VideoPredictor``); only the per-window
inference state is built here, from frames already decoded, exactly as ``init_state`` would from
a JPEG folder (same resize and normalization).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from gdino.core.detections import Detections
from gdino.core.rle import decode_mask, encode_mask
from gdino.errors import GdinoError
from gdino.track.results import FrameTracks, TrackedObject, mask_box
from gdino.track.source import Frame

#: SAM 2's input normalization (the package's ``load_video_frames`` defaults)
SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MaskSettings:
    """Attributes:
    detect_every: processed frames per window (the detector runs on each window's first frame).
    match_iou: least mask IoU for a detection to continue a track.
    max_missed: a track no detection matches at this many key frames in a row ends.
    """

    detect_every: int = 10
    match_iou: float = 0.3
    max_missed: int = 2

    def __post_init__(self) -> None:
        if self.detect_every < 1 or self.max_missed < 1 or not 0.0 < self.match_iou <= 1.0:
            raise GdinoError("need detect_every >= 1, max_missed >= 1 and 0 < match_iou <= 1")


@dataclass
class _Track:
    label: str
    score: float
    mask: np.ndarray  # HxW bool on the last frame processed
    missed: int = 0


def import_video_predictor():
    try:
        from sam2.sam2_video_predictor import SAM2VideoPredictor  # lazy: an optional extra ([sam2])
    except ImportError as e:
        raise GdinoError("masks mode needs the sam2 package: pip install 'gdino[sam2]'") from e
    return SAM2VideoPredictor


def build_video_predictor(
    config_file: str,
    state_dict: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
    overrides: Sequence[str] = (),
) -> torch.nn.Module:
    """A ``SAM2VideoPredictor`` from the package's config with ``state_dict`` (strict: every key used)."""
    import_video_predictor()
    from sam2.build_sam import build_sam2_video_predictor  # lazy: an optional extra ([sam2])

    model = build_sam2_video_predictor(
        config_file, ckpt_path=None, device="cpu", mode="eval", hydra_overrides_extra=list(overrides)
    )
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise GdinoError(f"SAM 2 video predictor weights: missing {len(missing)}, unexpected {len(unexpected)}")
    return model.to(device).eval()


def sam2_frames(frames: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """``[N, 3, size, size]`` float32 frames as the package's ``load_video_frames`` makes them."""
    out = torch.zeros(len(frames), 3, size, size, dtype=torch.float32)
    for i, arr in enumerate(frames):
        resized = np.array(Image.fromarray(arr).convert("RGB").resize((size, size))) / 255.0
        out[i] = torch.from_numpy(resized).permute(2, 0, 1)
    out -= torch.tensor(SAM2_MEAN, dtype=torch.float32)[:, None, None]
    out /= torch.tensor(SAM2_STD, dtype=torch.float32)[:, None, None]
    return out


def new_inference_state(predictor: Any, images: torch.Tensor, height: int, width: int) -> dict[str, Any]:
    """What ``SAM2VideoPredictor.init_state`` returns, for frames already in memory (kept on the CPU)."""
    device = predictor.device
    state: dict[str, Any] = {
        "images": images,
        "num_frames": len(images),
        "offload_video_to_cpu": True,
        "offload_state_to_cpu": False,
        "video_height": height,
        "video_width": width,
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": {},
        "obj_idx_to_id": {},
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }
    predictor._get_image_feature(state, frame_idx=0, batch_size=1)  # as init_state: warm frame 0
    return state


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A, B]`` IoU between two stacks of bool masks ``[A, H, W]`` and ``[B, H, W]``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa, fb = a.reshape(len(a), -1).astype(np.float32), b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


class MaskTracker:
    """Windows of frames + key-frame detections -> tracked masks (see the module docstring)."""

    def __init__(self, predictor: Any, settings: MaskSettings | None = None) -> None:
        self.predictor = predictor
        self.settings = settings or MaskSettings()
        self.tracks: dict[int, _Track] = {}
        self.next_id = 1

    @torch.inference_mode()
    def process(self, frames: Sequence[Frame], detections: Detections) -> list[FrameTracks]:
        """Track through one window: ``detections`` are of ``frames[0]``."""
        if not frames:
            return []
        p = self.predictor
        width, height = frames[0].size
        if len(detections) == 0 and not self.tracks:  # nothing to segment: no SAM 2 call at all
            return [FrameTracks(f.index, f.time, f.size, ()) for f in frames]
        state = new_inference_state(p, sam2_frames([f.image for f in frames], int(p.image_size)), height, width)
        boxes = detections.xyxy.numpy().astype(np.float32).reshape(-1, 4)
        det_masks = self._box_masks(state, boxes, height, width)
        p.reset_state(state)  # keeps the cached features of the key frame

        ids = sorted(self.tracks)
        matches = self._match(ids, det_masks)
        matched_dets = set(matches.values())
        for tid in ids:
            track = self.tracks[tid]
            if tid in matches:
                j = matches[tid]
                track.score, track.missed = float(detections.scores[j]), 0
                p.add_new_points_or_box(state, frame_idx=0, obj_id=tid, box=boxes[j])
            else:
                track.missed += 1
                if track.missed >= self.settings.max_missed or not track.mask.any():
                    del self.tracks[tid]
                    continue
                p.add_new_mask(state, frame_idx=0, obj_id=tid, mask=torch.from_numpy(track.mask))
        for j in range(len(boxes)):
            if j in matched_dets or not det_masks[j].any():
                continue
            tid = self.next_id
            self.next_id += 1
            self.tracks[tid] = _Track(detections.labels[j], float(detections.scores[j]), det_masks[j])
            p.add_new_points_or_box(state, frame_idx=0, obj_id=tid, box=boxes[j])

        per_frame: list[dict[int, np.ndarray]] = [{} for _ in frames]
        if self.tracks:
            for idx, obj_ids, logits in p.propagate_in_video(state):
                masks = (logits[:, 0] > 0.0).cpu().numpy()
                per_frame[idx] = {int(o): masks[k] for k, o in enumerate(obj_ids)}
        del state
        results = []
        for frame, masks in zip(frames, per_frame):
            objects = []
            for tid in sorted(masks):
                box = mask_box(masks[tid])
                if box is not None and tid in self.tracks:
                    t = self.tracks[tid]
                    objects.append(TrackedObject(tid, t.label, t.score, box, masks[tid]))
            results.append(FrameTracks(frame.index, frame.time, frame.size, tuple(objects)))
        for tid in list(self.tracks):
            last = per_frame[-1].get(tid)
            if last is None or not last.any():
                del self.tracks[tid]  # vanished (left the frame or hidden): the track ends
            else:
                self.tracks[tid].mask = last
        return results

    def _box_masks(self, state: dict[str, Any], boxes: np.ndarray, height: int, width: int) -> np.ndarray:
        """SAM 2's mask for every detection box on the key frame, ``[D, H, W]`` bool."""
        if len(boxes) == 0:
            return np.zeros((0, height, width), dtype=bool)
        for j, box in enumerate(boxes):  # each call returns the masks of every object so far
            _, _, logits = self.predictor.add_new_points_or_box(state, frame_idx=0, obj_id=j, box=box)
        return (logits[:, 0] > 0.0).cpu().numpy()

    def _match(self, ids: list[int], det_masks: np.ndarray) -> dict[int, int]:
        """track id -> detection index, by Hungarian matching of mask IoU (>= match_iou)."""
        if not ids or len(det_masks) == 0:
            return {}
        from scipy.optimize import linear_sum_assignment  # lazy: an optional dependency ([video] extra)

        iou = mask_iou(np.stack([self.tracks[t].mask for t in ids]), det_masks)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        return {ids[r]: int(c) for r, c in zip(rows, cols) if iou[r, c] >= self.settings.match_iou}

    # ------------------------------------------------------------------ resume
    def state(self) -> dict[str, Any]:
        """The state carried to the next window (JSON: masks as COCO RLE)."""
        return {
            "next_id": self.next_id,
            "tracks": [
                {"id": tid, "label": t.label, "score": t.score, "missed": t.missed, "mask": encode_mask(t.mask)}
                for tid, t in sorted(self.tracks.items())
            ],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.next_id = int(state["next_id"])
        self.tracks = {
            int(t["id"]): _Track(str(t["label"]), float(t["score"]), decode_mask(t["mask"]), int(t["missed"]))
            for t in state["tracks"]
        }
