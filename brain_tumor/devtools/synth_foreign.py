"""Studies unlike the training data, for testing the out-of-distribution check.

Each kind turns the slices of a synthetic in-distribution study (``brain_tumor.devtools.synth``)
into what a scorer may be handed by mistake; all return native-size H x W x 3 uint8 slices, the
same shape as the study they come from:

- ``ct``: a CT-like head, grayscale, bright bone ring and flat soft tissue;
- ``photograph``: a colour picture filling the whole frame;
- ``inverted``: the right anatomy with the contrast turned around (a T2-like look);
- ``noise``: uniform noise;
- ``artefact``: the right slices under heavy stripe (zipper) artefacts and a ghost.
"""

from __future__ import annotations

import numpy as np

FOREIGN_KINDS = ("ct", "photograph", "inverted", "noise", "artefact")


def foreign_slices(kind: str, slices: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """The slices of a study of the given foreign kind, made from in-distribution ``slices``."""
    if kind not in FOREIGN_KINDS:
        raise ValueError(f"kind must be one of {FOREIGN_KINDS}, received {kind!r}")
    rng = np.random.default_rng(seed)
    return [_make(kind, np.asarray(img), rng) for img in slices]


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
    else:  # artefact
        stripes = 90.0 * np.sign(np.sin(xx * np.pi / 2.0))
        ghost = np.roll(img.astype(np.float64), w // 3, axis=1) * 0.8
        out = img.astype(np.float64) + stripes[..., None] + ghost
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
