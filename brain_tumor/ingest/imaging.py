"""Decoding slices and masks: the one place where TIFF bytes become arrays.

Slices come back as ``H x W x 3`` uint8 in **file channel order** (pre-contrast, FLAIR,
post-contrast; OpenCV's BGR is undone here), masks as ``H x W`` uint8. Training, evaluation and
scoring all decode through these functions, so they see identical arrays.
"""

from __future__ import annotations

import cv2
import numpy as np

CHANNELS = ("pre-contrast", "FLAIR", "post-contrast")


class SliceError(ValueError):
    """A slice or mask that cannot be used; ``reason`` is a short code for the quarantine and
    ``part`` says which file of the pair is at fault ("image" or "mask")."""

    def __init__(self, reason: str, detail: str, part: str = "image") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.part = part


def _decode(data: bytes, what: str) -> np.ndarray:
    if not data:
        raise SliceError("unreadable", f"{what} file is empty (0 bytes)", what)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise SliceError("unreadable", f"{what} is not a readable TIFF ({exc.msg.strip()})",
                         what) from exc
    if arr is None:
        raise SliceError("unreadable", f"{what} is not a readable TIFF (corrupt or truncated, "
                                       f"{len(data)} bytes)", what)
    if arr.dtype != np.uint8:
        raise SliceError("not_uint8", f"{what} holds {arr.dtype} data, expected uint8", what)
    return arr


def decode_image(data: bytes) -> np.ndarray:
    """TIFF bytes -> H x W x 3 uint8 slice in file channel order; SliceError if unusable."""
    arr = _decode(data, "image")
    if arr.ndim != 3 or arr.shape[2] != 3:
        channels = 1 if arr.ndim == 2 else arr.shape[2]
        raise SliceError("channels", f"image has {channels} channel(s), expected 3 "
                                     f"({', '.join(CHANNELS)})")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes) -> np.ndarray:
    """TIFF bytes -> H x W uint8 mask (values unchecked); SliceError if unusable."""
    arr = _decode(data, "mask")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise SliceError("channels", f"mask has {arr.shape[2]} channels, expected 1", "mask")
    return arr


def encode_tiff(image: np.ndarray) -> bytes:
    """A slice (file channel order) or mask -> lossless TIFF bytes that decode back identically."""
    arr = image
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        order = [2, 1, 0] + ([3] if arr.shape[2] == 4 else [])
        arr = arr[..., order]
    ok, buf = cv2.imencode(".tif", np.ascontiguousarray(arr))
    if not ok:
        raise ValueError(f"cannot encode array of shape {image.shape} and dtype {image.dtype}")
    return buf.tobytes()


def resize_slice(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a slice to size x size (area interpolation when shrinking)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)
