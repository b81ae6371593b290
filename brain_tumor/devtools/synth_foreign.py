"""Studies unlike the training data, for testing the out-of-distribution check.

Each kind turns the slices of a synthetic in-distribution study (``brain_tumor.devtools.synth``)
into what a scorer may be handed by mistake; all return native-size H x W x 3 uint8 slices, the
same shape as the study they come from:

- ``ct``: a CT-like head, grayscale, bright bone ring and flat soft tissue;
- ``photograph``: a colour picture filling the whole frame;
- ``inverted``: the right anatomy with the contrast turned around (a T2-like look);
- ``noise``: uniform noise;
- ``artefact``: the right slices under heavy stripe (zipper) artefacts and a ghost;
- ``blur``: the right slices under a heavy Gaussian blur (sigma 4 % of the width);
- ``rotated``: the study turned by 90 degrees (back to the slice's shape when not square);
- ``cropped``: a badly cropped study, an off-centre part of the head enlarged to the frame;
- ``channel_zeroed``: one MRI channel (the same for the whole study) all zero. Not a study
  missing a sequence: the readers fill those from the FLAIR and mark them
  ``reduced_sequences``, which is in distribution.
"""

from __future__ import annotations

import cv2
import numpy as np

FOREIGN_KINDS = ("ct", "photograph", "inverted", "noise", "artefact", "blur", "rotated",
                 "cropped", "channel_zeroed")


def foreign_slices(kind: str, slices: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """The slices of a study of the given foreign kind, made from in-distribution ``slices``."""
    if kind not in FOREIGN_KINDS:
        raise ValueError(f"kind must be one of {FOREIGN_KINDS}, received {kind!r}")
    rng = np.random.default_rng(seed)
    if kind == "channel_zeroed":
        channel = int(rng.integers(0, 3))
        return [_zero_channel(np.asarray(img), channel) for img in slices]
    if kind == "cropped":
        corner = (float(rng.uniform(0.05, 0.15)), float(rng.choice([0.05, 0.45])))
        return [_crop(np.asarray(img), corner) for img in slices]
    return [_make(kind, np.asarray(img), rng) for img in slices]


def _zero_channel(img: np.ndarray, channel: int) -> np.ndarray:
    out = img.copy()
    out[..., channel] = 0
    return out


def _crop(img: np.ndarray, corner: tuple[float, float]) -> np.ndarray:
    """Half the frame's height and width from ``corner`` (fractions), enlarged to the frame."""
    h, w = img.shape[:2]
    top, left = int(corner[0] * h), int(corner[1] * w)
    part = img[top:top + max(2, h // 2), left:left + max(2, w // 2)]
    return cv2.resize(np.ascontiguousarray(part), (w, h), interpolation=cv2.INTER_LINEAR)


def _make(kind: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = (xx / w - 0.5) / 0.42, (yy / h - 0.5) / 0.36
    radius = np.sqrt(u**2 + v**2)
    head = img.max(axis=-1) >= 10
    if kind == "ct":
        tissue = np.where(radius <= 0.86, 45.0 + rng.normal(0, 2.0, (h, w)), 0.0)
        bone = (radius > 0.86) & (radius <= 1.0)
        gray = np.where(bone, 250.0, tissue)
        out = np.repeat(gray[..., None], 3, axis=-1)
    elif kind == "photograph":
        phase = rng.uniform(0, 2 * np.pi, 3)
        out = np.stack([127 + 120 * np.sin(xx / w * 6 + yy / h * 3 + p) for p in phase], -1)
        out[int(h * 0.3):int(h * 0.6), int(w * 0.2):int(w * 0.5)] = rng.uniform(0, 255, 3)
    elif kind == "inverted":
        out = np.where(head[..., None], 255.0 - img.astype(np.float64), 0.0)
    elif kind == "noise":
        out = rng.uniform(0, 255, (h, w, 3))
    elif kind == "blur":
        out = cv2.GaussianBlur(img.astype(np.float32), (0, 0), max(1.0, 0.04 * w))
    elif kind == "rotated":
        turned = np.ascontiguousarray(np.rot90(img))
        out = turned if turned.shape == img.shape else cv2.resize(
            turned, (w, h), interpolation=cv2.INTER_LINEAR)
    else:  # artefact
        stripes = 90.0 * np.sign(np.sin(xx * np.pi / 2.0))
        ghost = np.roll(img.astype(np.float64), w // 3, axis=1) * 0.8
        out = img.astype(np.float64) + stripes[..., None] + ghost
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
