"""Finding media files and decoding them into small square RGB frames.

Images go through Pillow; videos through decord or PyAV. Every decode function raises
only `MediaError` (one-line reason) for a file it cannot decode, so a caller can record
the reason and go on. Decoders here run in the calling process: a decoder that crashes
the process (decord can) is contained by `decode_worker`, which calls `decode` in a
child process.

Decoding is single-threaded per file on purpose: parallelism comes from the worker
processes, one file each.
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fastslow_cli.errors import FastslowError

from fastslow_cli.media import location
from fastslow_cli.media.discover import MediaFile
from fastslow_cli.media.location import is_url

DECODERS: tuple[str, ...] = ("decord", "av")

THUMB_SIZE = 256  # longest side of a stored thumbnail, pixels
THUMB_QUALITY = 85  # JPEG quality of thumbnails
AV_SEEK_MIN_FRAMES = 300  # PyAV seeks to each sample in clips this long, else decodes all
_REASON_MAX = 300
# decord prefixes its messages with "[12:00:00] /github/workspace/src/...cc:83: ".
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


class MediaError(FastslowError):
    """A file that cannot be decoded; the message is the one-line reason."""


class NotAnImage(MediaError):
    """Pillow does not recognise the content at all (it may be a video with an image name)."""



@dataclass
class Decoded:
    """Frames of one item, resized to (size, size), with their times in seconds."""

    frames: np.ndarray
    timestamps: list[float]
    decoder: str
    requested: int
    kind: str  # "image" or "video", from the content (the extension may lie)
    warning: str | None = None  # e.g. fewer decodable frames than the container declares
    thumbnails: list[bytes] | None = None  # one JPEG per frame, when asked for (`decode(thumbnail=...)`)



# ----------------------------------------------------------------------------- sampling


def sample_indices(num_frames: int, n: int) -> list[int]:
    """Indices of the centres of `n` equal segments of a clip of `num_frames` frames.

    Distinct and increasing; a clip with at most `n` frames gives all of them.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if num_frames <= n:
        return list(range(max(num_frames, 0)))
    return [int((i + 0.5) * num_frames / n) for i in range(n)]


# ----------------------------------------------------------------------------- errors

_F = TypeVar("_F", bound=Callable[..., Decoded])


def _reason(exc: BaseException) -> str:
    """A short one-line reason from any decoder exception."""
    text = getattr(exc, "strerror", None) or str(exc)
    if not isinstance(exc, (OSError, RuntimeError)):  # decoders' own errors read well alone
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    text = " ".join(_DECORD_PREFIX.sub("", text).split())
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def _check_readable(path: Path) -> None:
    """Give the common file-level failures a clear reason before any decoder sees them."""
    try:
        st = path.stat()
        if st.st_size == 0:
            raise MediaError("empty file")
        with open(path, "rb"):
            pass
    except PermissionError:
        raise MediaError("permission denied") from None
    except FileNotFoundError:
        raise MediaError("file not found (moved or deleted?)") from None
    except IsADirectoryError:
        raise MediaError("is a folder, not a file") from None


def _media_errors(fn: _F) -> _F:
    """Decoders raise all kinds of exceptions on bad data; turn any of them into MediaError."""

    @functools.wraps(fn)
    def wrapper(path: Path, *args: int) -> Decoded:
        _check_readable(Path(path))
        try:
            return fn(Path(path), *args)
        except MediaError:
            raise
        except Exception as exc:  # noqa: BLE001 - boundary: any decoder failure is a bad file
            raise MediaError(_reason(exc)) from exc

    return wrapper  # type: ignore[return-value]


# ----------------------------------------------------------------------------- images


HEIF_EXTS = frozenset({".heic", ".heif"})


@functools.cache
def _heif_opener() -> bool:
    """Teach Pillow HEIC/HEIF through pillow-heif, once per process and only when a file
    needs it, so decoding other images never imports it. False if it is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _open_image(path: Path) -> Image.Image:
    """Image.open, registering the HEIF opener first for a HEIF name or an unknown content
    (a HEIC named .jpg); NotAnImage when no opener knows the content."""
    if path.suffix.lower() in HEIF_EXTS:
        _heif_opener()
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        if not _heif_opener():
            raise NotAnImage("Pillow cannot identify it as an image (for HEIC/HEIF: pip install pillow-heif)") from None
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise NotAnImage("Pillow cannot identify it as an image") from None


def looks_like_image(path: Path) -> bool:
    """True when Pillow recognises the content from its header (cheap: nothing is decoded)."""
    try:
        with _open_image(path):
            return True
    except Exception:  # noqa: BLE001 - anything unreadable is simply not an image
        return False


@_media_errors
def decode_image(path: Path, size: int, thumbnail: int = 0) -> Decoded:
    """One frame: EXIF orientation applied, transparency over white, squashed to size x size.

    `thumbnail` > 0 also makes a JPEG of the same decoded picture, aspect kept, longest
    side at most `thumbnail` (a JPEG is then drafted at that size rather than `size`).
    """
    with _open_image(path) as img:
        draft = max(size, thumbnail)
        img.draft("RGB", (draft, draft))  # JPEG: decode at a reduced scale, much faster
        img.load()
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - a broken EXIF block must not lose a good image
            oriented = img
        rgb = _to_rgb(oriented)
        frame = _resize(rgb, size)
        thumbs = [encode_thumbnail(rgb, thumbnail)] if thumbnail else None
    return Decoded(
        frames=frame[None].copy(), timestamps=[0.0], decoder="pillow", requested=1, kind="image", thumbnails=thumbs
    )


def encode_thumbnail(img: Image.Image | np.ndarray, longest: int = THUMB_SIZE) -> bytes:
    """A JPEG of `img` with its longest side at most `longest` (never enlarged), aspect kept."""
    pil = Image.fromarray(img) if isinstance(img, np.ndarray) else img.copy()
    pil.thumbnail((longest, longest), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    pil.convert("RGB").save(out, format="JPEG", quality=THUMB_QUALITY)
    return out.getvalue()


def _resize(img: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Squash to size x size: the whole frame kept, nothing cropped."""
    pil = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode: deep greyscale scaled down, transparency over white."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):  # 16/32-bit greyscale
        arr = np.asarray(img, dtype=np.float32)
        if arr.size and arr.max() > 255:
            arr = arr * (255.0 / 65535.0)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


# ----------------------------------------------------------------------------- videos


@_media_errors
def decode_video_decord(path: Path, size: int, frames: int, thumbnail: int = 0) -> Decoded:
    """`frames` uniformly sampled frames, resized by decord itself while decoding.

    decord fails on some output widths (8, 12, 16, 24, 48, 72 ...: dmlc/decord #336), not
    (in our tests) on multiples of 32: other sizes are decoded that wide, narrowed here.
    With `thumbnail`, decord decodes at the thumbnail's size (aspect kept, read from the
    header) when that is larger, and the model's frames are resized from the same pixels.
    """
    try:
        import decord
    except ImportError:
        raise MediaError("decord is not installed: use --decoder av") from None
    tw, th = thumbnail_dims(*_av_dims(path), thumbnail) if thumbnail else (0, 0)
    width, height = -(-max(size, tw) // 32) * 32, max(size, th)
    vr = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    try:
        indices = sample_indices(len(vr), frames)
        if not indices:
            raise MediaError("no decodable frames")
        batch = vr.get_batch(indices).asnumpy()
        times = vr.get_frame_timestamp(indices)[:, 0]
        vr.seek(0)  # releases the decoded buffers held after get_batch (dmlc/decord #197)
    finally:
        del vr
    thumbs = [encode_thumbnail(_resize_to(frame, tw, th), thumbnail) for frame in batch] if thumbnail else None
    if (width, height) != (size, size):
        batch = np.stack([_resize(frame, size) for frame in batch])
    return Decoded(
        frames=np.ascontiguousarray(batch, dtype=np.uint8),
        timestamps=[round(float(t), 6) for t in times],
        decoder="decord",
        requested=frames,
        kind="video",
        thumbnails=thumbs,
    )


def thumbnail_dims(width: int, height: int, longest: int) -> tuple[int, int]:
    """(width, height) scaled so the longest side is at most `longest`: aspect kept, never enlarged."""
    scale = min(1.0, longest / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize_to(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def _av_dims(path: Path) -> tuple[int, int]:
    """(width, height) of the first video stream, from the header (nothing is decoded)."""
    import av

    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise MediaError("no video stream")
        ctx = container.streams.video[0].codec_context
        return int(ctx.width), int(ctx.height)


@_media_errors
def decode_video_av(path: Path, size: int, frames: int, thumbnail: int = 0) -> Decoded:
    """`frames` uniformly sampled frames with PyAV, robust to damaged packets.

    PyAV can drop damaged frames silently (PyAV #185) and a decode generator dies at its
    first error (#812), so packets are decoded one by one, errors are skipped, and the
    frames really decoded are counted. If that count differs from the one the container
    declares, sampling is redone over the real count so the frames stay uniform.
    Long clips (`AV_SEEK_MIN_FRAMES`) first try seeking to each sample, as decord does.
    With `thumbnail`, each kept frame is also scaled (aspect kept) to a thumbnail.
    """
    declared = _av_declared_frames(path)
    grab = functools.partial(_av_grab, size=size, thumbnail=thumbnail)
    picked = _av_seek(path, grab, sample_indices(declared, frames)) if declared >= AV_SEEK_MIN_FRAMES else None
    warning = None
    if picked is None:  # short clip, or one that does not seek cleanly: decode every frame
        picked, total = _av_pass(path, grab, sample_indices(declared, frames) if declared else [])
        if total != declared:
            picked, total = _av_pass(path, grab, sample_indices(total, frames) if total else [])
        if not picked:
            raise MediaError("no decodable frames")
        if declared and total < declared:
            warning = f"only {total} of the {declared} frames the file declares could be decoded"
    return Decoded(
        frames=np.stack([f for _, f, _ in picked]),
        timestamps=[t for t, _, _ in picked],
        decoder="av",
        requested=frames,
        kind="video",
        warning=warning,
        thumbnails=[j for _, _, j in picked] if thumbnail else None,
    )


_Picked = tuple[float, np.ndarray, bytes]  # (time, model frame, thumbnail JPEG or b"")


def _av_grab(frame: Any, t: float, size: int, thumbnail: int) -> _Picked:
    """The model frame and (with `thumbnail`) the thumbnail of one decoded PyAV frame."""
    rgb = frame.to_ndarray(width=size, height=size, format="rgb24")
    if not thumbnail:
        return t, rgb, b""
    tw, th = thumbnail_dims(frame.width, frame.height, thumbnail)
    return t, rgb, encode_thumbnail(frame.to_ndarray(width=tw, height=th, format="rgb24"), thumbnail)


def _av_declared_frames(path: Path) -> int:
    """Frames the container declares, or (when it does not say, e.g. MKV) its packet count."""
    import av

    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise MediaError("no video stream")
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        count = 0
        try:
            for packet in container.demux(stream):
                count += packet.size > 0
        except av.error.FFmpegError:  # a damaged tail: count what was read
            pass
        return count


def _av_seek(path: Path, grab: Callable[[Any, float], _Picked], indices: list[int]) -> list[_Picked] | None:
    """Seek to each sampled frame (by its time at the average rate) and decode up to it.

    Far cheaper than decoding a long clip end to end. None when the file does not seek
    cleanly (an error, or no frame at a target): the caller then decodes every frame.
    """
    import av

    picked: list[_Picked] = []
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        rate = stream.average_rate or stream.guessed_rate
        if not rate or stream.time_base is None:
            return None
        start = stream.start_time if stream.start_time is not None else 0
        half_frame = int(1 / (2 * rate * stream.time_base))
        try:
            for index in indices:
                target = start + int(index / (rate * stream.time_base))
                container.seek(target, stream=stream, backward=True)
                frame = _first_frame_from(container, stream, target - half_frame)
                if frame is None:
                    return None
                t = round(float((frame.pts - start) * stream.time_base), 6)
                picked.append(grab(frame, t))
        except av.error.FFmpegError:
            return None
    return picked


def _first_frame_from(container: Any, stream: Any, min_pts: int) -> Any | None:
    """After a seek: the first decoded frame whose pts is at least `min_pts`."""
    import av

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError:  # damaged packet: keep going
            continue
        for frame in frames:
            if frame.pts is not None and frame.pts >= min_pts:
                return frame
    return None


def _av_pass(path: Path, grab: Callable[[Any, float], _Picked], wanted: list[int]) -> tuple[list[_Picked], int]:
    """Decode every frame once; keep `grab(frame, time)` for the frame ordinals in `wanted`.

    Returns the kept frames and the number of frames actually decoded.
    """
    import av

    wanted_set = set(wanted)
    picked: list[_Picked] = []
    total = 0
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        start = stream.start_time if stream.start_time is not None else 0
        rate = float(stream.average_rate or stream.guessed_rate or 0)

        def keep(frame: av.VideoFrame) -> None:
            nonlocal total
            if total in wanted_set:
                if frame.pts is not None:
                    t = float((frame.pts - start) * stream.time_base)
                else:
                    t = total / rate if rate else 0.0
                picked.append(grab(frame, round(t, 6)))
            total += 1

        try:
            for packet in container.demux(stream):
                try:
                    for frame in packet.decode():  # an empty packet at the end flushes
                        keep(frame)
                except av.error.FFmpegError:  # damaged packet: skip it, keep decoding
                    continue
        except av.error.FFmpegError:  # the container itself breaks off (truncated file)
            try:
                for frame in stream.codec_context.decode(None):
                    keep(frame)
            except av.error.FFmpegError:
                pass
    return picked, total


# ----------------------------------------------------------------------------- dispatch


def decode(item: MediaFile, size: int, frames: int, decoder: str, thumbnail: int = 0) -> Decoded:
    """Decode one item in this process: images with Pillow, videos with `decoder`.

    The content decides, not the extension: an "image" Pillow cannot identify is tried as
    a video (with PyAV), and a "video" whose header Pillow knows is decoded as an image.
    `Decoded.kind` says which it was. `thumbnail` > 0 also gives a JPEG per frame
    (`Decoded.thumbnails`) made from the frames decoded here, never a second decode: an
    image's from the decoded picture, a video's from its sampled frames as decoded (longest
    side `thumbnail`, aspect kept, never enlarged).
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {DECODERS}")
    if not is_url(item.path):
        return _decode_file(Path(item.path), item.kind, size, frames, decoder, thumbnail)
    with _fetched(item.path) as local:
        return _decode_file(local, item.kind, size, frames, decoder, thumbnail)


@contextmanager
def _fetched(url: str) -> Iterator[Path]:
    """A local copy of an object for the decoders (location.local_copy), its failures as MediaError."""
    with ExitStack() as stack:
        try:
            local = stack.enter_context(location.local_copy(url))
        except FileNotFoundError:
            raise MediaError("object not found (moved or deleted?)") from None
        except Exception as exc:  # noqa: BLE001 - any failure to fetch costs this item only
            raise MediaError(f"cannot fetch it: {_reason(exc)}") from None
        yield Path(local)


def _decode_file(path: Path, kind: str, size: int, frames: int, decoder: str, thumbnail: int) -> Decoded:
    if kind == "image":
        try:
            return decode_image(path, size, thumbnail)
        except NotAnImage as not_image:
            try:
                return decode_video_av(path, size, frames, thumbnail)
            except MediaError as exc:
                raise MediaError(f"{not_image}, nor can PyAV decode it as a video ({exc})") from None
    if looks_like_image(path):
        return decode_image(path, size, thumbnail)
    if decoder == "decord":
        return decode_video_decord(path, size, frames, thumbnail)
    return decode_video_av(path, size, frames, thumbnail)


def decode_with_thumbnails(item: MediaFile, size: int, frames: int, decoder: str) -> Decoded:
    """`decode` with `THUMB_SIZE` thumbnails: the pool's decode function at extract time."""
    return decode(item, size, frames, decoder, THUMB_SIZE)


__all__ = [
    "DECODERS",
    "HEIF_EXTS",
    "Decoded",
    "MediaError",
    "MediaFile",
    "NotAnImage",
    "decode",
    "decode_image",
    "decode_video_av",
    "decode_video_decord",
    "decode_with_thumbnails",
    "encode_thumbnail",
    "looks_like_image",
    "sample_indices",
]
