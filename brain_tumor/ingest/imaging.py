"""Decoding slices and masks: the one place where TIFF bytes become arrays.

Slices come back as ``H x W x 3`` uint8 in **file channel order** (pre-contrast, FLAIR,
post-contrast; OpenCV's BGR is undone here), masks as ``H x W`` uint8. Training, evaluation and
scoring all decode through these functions, so they see identical arrays.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

CHANNELS = ("pre-contrast", "FLAIR", "post-contrast")
#: the smallest height and width, in pixels, of a slice or mask that ingest accepts
MIN_SLICE_SIZE = 16
#: the first bytes of every TIFF file: little- or big-endian, classic or BigTIFF
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: the most bytes a decoded pixel may take (4 samples of 16 bits): more is ``too_large``
MAX_BYTES_PER_PIXEL = 8
#: the first bytes of the other formats OpenCV decodes: such bytes are ``not_tiff``, never decoded
OTHER_IMAGE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"GIF8": "GIF",
    b"RIFF": "WebP", b"\x00\x00\x00\x0cjP  ": "JPEG 2000", b"\xffO\xffQ": "JPEG 2000",
    b"v/1\x01": "OpenEXR", b"#?RADIANCE": "Radiance HDR", b"#?RGBE": "Radiance HDR",
    b"Y\xa6j\x95": "Sun raster",
    **{f"P{c}{space}".encode(): "PNM" for c in "1234567fF" for space in " \t\r\n"},
}
_TIFF_TAGS = {256: "width", 257: "height", 258: "bits", 277: "samples"}
#: TIFF field type -> (struct code, size) of the integer types a size field may have
_TIFF_INTS = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


class SliceError(ValueError):
    """A slice or mask that cannot be used; ``reason`` is a short code for the quarantine and
    ``part`` says which file of the pair is at fault ("image" or "mask")."""

    def __init__(self, reason: str, detail: str, part: str = "image") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.part = part


@dataclass(frozen=True)
class TiffHeader:
    """What the first image directory of a TIFF says about the image, read without decoding."""

    width: int
    height: int
    samples: int = 1  # samples (channels) per pixel
    bits: int = 1  # the largest bits per sample

    @property
    def pixels(self) -> int:
        """width x height."""
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """The bytes the image takes once decoded."""
        return self.pixels * self.samples * -(-self.bits // 8)


def _unpack(fmt: str, data: bytes, offset: int) -> tuple[int, ...]:
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        raise ValueError(f"offset {offset} is past the end of the {len(data)} bytes")
    return struct.unpack_from(fmt, data, offset)


def read_tiff_header(data: bytes) -> TiffHeader:
    """Width, height, samples and bits of a TIFF's first image from its header and first image
    directory (classic and BigTIFF, either byte order), without decoding it; ValueError if
    those bytes are not there."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8:
        raise ValueError(f"no TIFF header: the bytes start with {data[:8]!r}")
    version, = _unpack(order + "H", data, 2)
    if version == 42:  # classic: 32-bit offsets and counts, 12-byte entries
        (ifd,), entries_fmt, word, entry_size = _unpack(order + "I", data, 4), "H", "I", 12
    elif version == 43:  # BigTIFF: 64-bit offsets and counts, 20-byte entries
        (ifd,), entries_fmt, word, entry_size = _unpack(order + "Q", data, 8), "Q", "Q", 20
    else:
        raise ValueError(f"unknown TIFF version {version}")
    entries, = _unpack(order + entries_fmt, data, ifd)
    first = ifd + struct.calcsize(entries_fmt)
    if first + entries * entry_size > len(data):
        raise ValueError(f"the image directory at {ifd} ({entries} entries) is past the end of "
                         f"the {len(data)} bytes")
    found: dict[str, int] = {}
    for i in range(entries):
        at = first + i * entry_size
        tag, kind = _unpack(order + "HH", data, at)
        name = _TIFF_TAGS.get(tag)
        if name is None or kind not in _TIFF_INTS:
            continue
        code, size = _TIFF_INTS[kind]
        count, = _unpack(order + word, data, at + 4)
        shown = min(count, 16)  # bits: one value per sample; the first few tell the size
        where = at + 4 + struct.calcsize(word)  # the value, or its offset when it does not fit
        if count * size > struct.calcsize(word):
            where, = _unpack(order + word, data, where)
        values = _unpack(f"{order}{shown}{code}", data, where) if shown else (0,)
        found[name] = max(values)
    if "width" not in found or "height" not in found:
        raise ValueError("the first image directory gives no width or height")
    return TiffHeader(found["width"], found["height"], max(found.get("samples", 1), 1),
                      max(found.get("bits", 1), 1))


def other_image_format(data: bytes) -> str | None:
    """The name of the (non-TIFF) image format whose signature data starts with, else None."""
    for signature, name in OTHER_IMAGE_SIGNATURES.items():
        if data.startswith(signature):
            return name
    return None


def check_header(data: bytes, what: str = "image",
                 max_pixels: int | None = None) -> TiffHeader:
    """The TIFF header of a slice or mask, checked before any decoding; SliceError when the
    bytes are empty, not a TIFF (``not_tiff``, ``unreadable``) or bigger than max_pixels
    (``too_large``: more pixels, or more than MAX_BYTES_PER_PIXEL bytes a pixel)."""
    if not data:
        raise SliceError("unreadable", f"{what} file is empty (0 bytes)", what)
    if not data.startswith(TIFF_MAGIC):
        other = other_image_format(data)
        if other:
            raise SliceError("not_tiff", f"{what} is an image but not a TIFF (it starts with "
                                         f"{data[:8]!r}, a {other}; a TIFF starts with II*\\0 or "
                                         f"MM\\0*)", what)
        raise SliceError("unreadable", f"{what} is not a readable TIFF (corrupt or truncated, "
                                       f"{len(data)} bytes)", what)
    try:
        header = read_tiff_header(data)
    except (ValueError, struct.error) as exc:
        raise SliceError("unreadable", f"{what} is not a readable TIFF (its header: {exc}; "
                                       f"{len(data)} bytes)", what) from None
    if max_pixels is not None and (header.pixels > max_pixels or
                                   header.decoded_bytes > max_pixels * MAX_BYTES_PER_PIXEL):
        raise SliceError("too_large", (
            f"{what} is {header.height}x{header.width} pixels ({header.pixels:,} pixels, "
            f"{header.samples} sample(s) of {header.bits} bits) by its header, over the "
            f"limit of {max_pixels:,} pixels (max_slice_pixels) of at most "
            f"{MAX_BYTES_PER_PIXEL} bytes; not decoded"), what)
    return header


def _decode(data: bytes, what: str, min_size: int, max_pixels: int | None = None) -> np.ndarray:
    header = check_header(data, what, max_pixels)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise SliceError("unreadable", f"{what} is not a readable TIFF ({exc.msg.strip()})",
                         what) from exc
    if arr is None:
        raise SliceError("unreadable", f"{what} is not a readable TIFF (corrupt or truncated, "
                                       f"{len(data)} bytes)", what)
    if arr.shape[:2] != (header.height, header.width):
        raise SliceError("unreadable", f"{what} decodes to {arr.shape[0]}x{arr.shape[1]} pixels "
                                       f"where its header says {header.height}x{header.width}",
                         what)
    if arr.dtype != np.uint8:
        raise SliceError("not_uint8", f"{what} holds {arr.dtype} data, expected uint8", what)
    if min(arr.shape[:2]) < min_size:
        raise SliceError("too_small", f"{what} is {arr.shape[0]}x{arr.shape[1]} pixels, the "
                                      f"smallest accepted is {min_size}x{min_size}", what)
    return arr


def decode_image(data: bytes, min_size: int = 1, max_pixels: int | None = None) -> np.ndarray:
    """TIFF bytes -> H x W x 3 uint8 slice in file channel order; SliceError if unusable
    (not decodable, not a TIFF, not uint8, smaller than min_size, more pixels than max_pixels
    by its header, not 3 channels)."""
    arr = _decode(data, "image", min_size, max_pixels)
    if arr.ndim != 3 or arr.shape[2] != 3:
        channels = 1 if arr.ndim == 2 else arr.shape[2]
        raise SliceError("channels", f"image has {channels} channel(s), expected 3 "
                                     f"({', '.join(CHANNELS)})")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes, min_size: int = 1, max_pixels: int | None = None) -> np.ndarray:
    """TIFF bytes -> H x W uint8 mask (values unchecked); SliceError if unusable."""
    arr = _decode(data, "mask", min_size, max_pixels)
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
