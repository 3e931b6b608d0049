"""``gdino track``: text-prompted multi-object tracking in a video, resumably; the work is in :mod:`gdino.track`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gdino.cli.options import (
    add_detect_options,
    add_model_options,
    add_prompt_options,
    check_folder_out,
    check_prompt,
    detect_options,
    load_detector,
    parse_classes,
    weights_name,
)
from gdino.cli.segment import add_segmenter_options, build_segmenter_from
from gdino.errors import GdinoError
from gdino.segment.names import canonical_name


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``track`` sub-command."""
    p = subparsers.add_parser(
        "track",
        help="track what a prompt names through a video (boxes with ByteTrack, or SAM 2 masks), resumably",
        description="Detect the objects a prompt (-p) or class list (--classes) names in every frame of VIDEO "
        "and give each one an identity that persists: boxes mode associates detections with ByteTrack, masks "
        "mode propagates SAM 2 masks and re-detects every N frames. Writes tracks.json, mot.txt (MOTChallenge) "
        "and with --draw tracks.mp4 into the DIR --out names. An interrupted run resumes when run again.",
    )
    p.add_argument(
        "video", metavar="VIDEO", help="video file (mp4, mkv, ...), folder of frames, or stream URL (rtsp://...)"
    )
    add_prompt_options(p)
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (created if needed)")
    p.add_argument(
        "--mode", choices=("boxes", "masks"), default="boxes", help="boxes (ByteTrack, default) or masks (SAM 2)"
    )
    p.add_argument(
        "--detect-every",
        type=int,
        default=10,
        metavar="N",
        help="masks mode: run the detector every N processed frames (default 10)",
    )
    p.add_argument("--start", type=int, default=0, metavar="S", help="first source frame (from 0)")
    p.add_argument("--end", type=int, default=None, metavar="E", help="stop before this source frame")
    p.add_argument("--stride", type=int, default=1, metavar="K", help="process every K-th frame (default 1)")
    p.add_argument(
        "--chunk",
        type=int,
        default=32,
        metavar="N",
        help="boxes mode: frames per journal record, the unit a resumed run keeps (default 32)",
    )
    p.add_argument("--draw", action="store_true", help="also write tracks.mp4 with boxes/masks, ids and labels")
    p.add_argument(
        "--track-threshold",
        type=float,
        default=None,
        metavar="T",
        help="boxes mode: a detection must score T to start a track or be matched first (default 0.4)",
    )
    p.add_argument(
        "--lost-frames",
        type=int,
        default=None,
        metavar="N",
        help="boxes mode: frames (at 30 fps) a lost track is kept to be found again (default 30)",
    )
    add_model_options(p)
    add_detect_options(p)
    add_segmenter_options(p, None)
    p.add_argument("--overwrite", action="store_true", help="discard an earlier job in DIR instead of resuming it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_track)


def run_track(args: argparse.Namespace) -> int:
    from gdino.track.boxes import ByteTrackSettings  # lazy: keeps gdino --help fast
    from gdino.track.job import track_video
    from gdino.track.masks import MaskSettings
    from gdino.track.source import VideoSource
    from gdino.track.stream import TrackSettings

    options = detect_options(args)
    check_prompt(args)
    masks = args.mode == "masks"
    segmenter_name: str = args.segmenter or "sam2.1-hiera-t"
    if not masks and (args.segmenter or args.segmenter_weights):
        raise GdinoError("--segmenter and --segmenter-weights only apply with --mode masks")
    if masks and not canonical_name(segmenter_name).startswith("sam2"):
        raise GdinoError(f"--mode masks needs a SAM 2 segmenter (sam2.1-hiera-t/s/b+/l), not {segmenter_name}")
    bt = {}
    if args.track_threshold is not None:
        bt = {"track_activation_threshold": args.track_threshold, "high_conf_det_threshold": args.track_threshold}
    if args.lost_frames is not None:
        bt["lost_track_buffer"] = args.lost_frames
    settings = TrackSettings(
        args.mode,
        args.start,
        args.end,
        args.stride,
        args.chunk,
        bytetrack=ByteTrackSettings(**bt),
        masks=MaskSettings(detect_every=args.detect_every),
    )
    classes = parse_classes(args.classes) if args.classes is not None else None
    out = Path(args.out)
    check_folder_out(out)
    VideoSource(args.video, settings.frame_range)  # unreadable video: fail before loading the model

    detector = load_detector(args, options)
    sam2 = None
    extra = {"weights": weights_name(args)}
    if masks:
        args.segmenter = segmenter_name
        sam2 = build_segmenter_from(args, detector.device)
        extra.update(segmenter=segmenter_name, segmenter_weights=args.segmenter_weights)
    summary = track_video(
        detector,
        args.video,
        out,
        classes if classes is not None else args.prompt,
        settings=settings,
        options=options,
        sam2=sam2,
        draw=args.draw,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        extra=extra,
    )
    if summary.warning:
        print(f"gdino track: warning: {summary.warning}", file=sys.stderr)
    print(f"gdino track: {summary.line()}; outputs in {out}", file=sys.stderr)
    return 0
