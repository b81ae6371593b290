"""Pictures of predictions in plain numpy/OpenCV: slice overlays, contact sheets, PNG bytes.

Images here are RGB uint8. Slices come in file channel order (pre-contrast, FLAIR,
post-contrast); the background is the FLAIR channel in grayscale unless ``composite`` is asked for.
A contact sheet may carry a banner: a red band across its top with white text (the
out-of-distribution flag).
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

log = logging.getLogger(__name__)

FOOTER = "Research use only - not for diagnosis"
MIN_SIDE = 256  # overlays are scaled up to at least this many pixels per side
BAND = 22  # height of the text bands above and below the image
FLAIR = 1
RED = (255, 0, 0)
YELLOW = (255, 255, 0)
WHITE = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX
BANNER_RED = (200, 0, 0)
BANNER_HEIGHT = 36
#: the overview banner of a study flagged out of distribution
OOD_BANNER = "OUT OF DISTRIBUTION - unlike the training data"


def _background(image: np.ndarray, composite: bool) -> np.ndarray:
    """The slice as an RGB uint8 picture: FLAIR as grayscale, or the channels as RGB."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"image must be H x W or H x W x 3 uint8, "
                         f"received {arr.shape} {arr.dtype}")
    if arr.ndim == 2:
        gray = arr
    elif composite:
        return arr.copy()
    else:
        gray = arr[..., FLAIR]
    return np.repeat(gray[..., None], 3, axis=2)


def _put_text(canvas: np.ndarray, text: str, y_baseline: int, color: tuple[int, int, int],
              scale: float = 0.5, thickness: int = 1) -> None:
    """Draw text left-aligned at a baseline, shrunk to fit the canvas width."""
    width = canvas.shape[1] - 8
    (tw, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
    if tw > width:
        scale *= width / tw
    cv2.putText(canvas, text, (4, y_baseline), FONT, scale, color, thickness, cv2.LINE_AA)


def overlay(image: np.ndarray, mask: np.ndarray | None, bbox: tuple[int, int, int, int] | None,
            probability: float, label: int, *, composite: bool = False,
            caption: str | None = None) -> np.ndarray:
    """An RGB uint8 picture of a slice: tumor contour (red), box (yellow), probability (or
    ``caption`` in its place), footer."""
    bg = _background(image, composite)
    h, w = bg.shape[:2]
    scale = max(1, math.ceil(MIN_SIDE / min(h, w)))
    big = cv2.resize(bg, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape[:2] != (h, w):
            raise ValueError(f"mask shape {m.shape} does not match the image's {(h, w)}")
        m = (m.reshape(h, w) != 0).astype(np.uint8)
        if m.any():
            m = cv2.resize(m, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(big, contours, -1, RED, max(1, scale // 4))
    if bbox is not None:
        y0, x0, y1, x1 = (int(v) for v in bbox)
        cv2.rectangle(big, (x0 * scale, y0 * scale), ((x1 + 1) * scale - 1, (y1 + 1) * scale - 1),
                      YELLOW, 1)
    canvas = np.zeros((h * scale + 2 * BAND, w * scale, 3), np.uint8)
    canvas[BAND:BAND + h * scale] = big
    verdict = "tumor" if int(label) else "no tumor"
    _put_text(canvas, caption if caption is not None else f"p={float(probability):.2f} {verdict}",
              BAND - 6, WHITE)
    _put_text(canvas, FOOTER, canvas.shape[0] - 7, WHITE)
    return canvas


def contact_sheet(tiles: list[np.ndarray], columns: int = 4, gap: int = 4,
                  banner: str | None = None) -> np.ndarray:
    """RGB tiles laid out in a grid (row by row), padded to the largest tile; dark gaps; a red
    band with ``banner`` across the top when given."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, received {columns}")
    rgb = [_background(t, composite=True) for t in tiles]
    th = max(t.shape[0] for t in rgb)
    tw = max(t.shape[1] for t in rgb)
    cols = min(columns, len(rgb))
    rows = math.ceil(len(rgb) / cols)
    sheet = np.full((rows * th + (rows + 1) * gap, cols * tw + (cols + 1) * gap, 3), 32, np.uint8)
    for i, tile in enumerate(rgb):
        r, c = divmod(i, cols)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        sheet[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    if banner is None:
        return sheet
    band = np.zeros((BANNER_HEIGHT, sheet.shape[1], 3), np.uint8)
    band[:] = BANNER_RED
    _put_text(band, banner, BANNER_HEIGHT - 12, WHITE, scale=0.6, thickness=2)
    return np.concatenate([band, sheet], axis=0)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H x W x 3) or grayscale (H x W) uint8 image.

    OpenCV's default PNG settings (zlib level 1, run-length strategy) are kept: on 256 x 300
    overlays they encode about twice as fast as an explicit level 1 (default strategy), which
    gives files about 40 % smaller.
    """
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"expected H x W or H x W x 3 uint8, received {arr.shape} {arr.dtype}")
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise ValueError(f"cannot encode image of shape {arr.shape} as PNG")
    return buf.tobytes()
