"""Out-of-distribution check: how unlike the training slices a slice or a study is.

Slice detectors, each a distance to the training patients' slices, and two study-level
criteria, computed on the model's actual input (after resizing and intensity mapping; native
size is not a signal):

- ``input``: cheap statistics of the image itself (``input_statistics``: foreground fraction,
  per-channel mean, spread, histogram and edge energy over the foreground, correlation between
  channels, saturation, the head's aspect and its reach to the frame's edge, where the head lies
  in the frame, which way it is elongated and how far it reaches (``head_mask``: its outline),
  sharpness and high-frequency ratio along x and y (blur), the short-period ripple of the head's
  row and column profiles (stripe and zipper artefacts), empty grey levels (a narrow band
  stretched)),
  as a Mahalanobis distance with a shrunk correlation (each statistic standardized, then
  Ledoit-Wolf). The reference states the intensity mapping its statistics were taken after
  (``input_norm``, the model version's);
- ``features``: what the classifier itself sees, its penultimate (global-pooled) features,
  projected on the training slices' leading principal components and whitened; the distance is
  the norm of the whitened projection (Mahalanobis in that subspace). Used when the engine
  returns features;
- ``study``: the study as one point, the median over its slices of each input statistic
  (``study_summary``), against the training patients' medians: each standardized, their
  correlation shrunk ``STUDY_SHRINKAGE`` of the way to the identity (a few dozen training
  studies for about fifty statistics). Shifts too small against the spread of single slices
  (blur, one channel missing) stand out once a whole study is summed up;
- ``geometry``: a few head-geometry statistics (``GEOMETRY_STATS``: centroid offset, elongation,
  extent) of the same study medians, each as a robust z against the training patients' medians
  (median and MAD, the spread at least ``GEOMETRY_MIN_SPREAD``), the largest |z| the value
  (``GeometryCheck``). A study turned or badly cropped moves one or two of these far, a shift
  the study detector's fifty dimensions would dilute.

Each slice detector's bound is a quantile of the **validation** slices' distances
(``slice_rate``, the share of in-distribution slices allowed over it), never of test slices.
The study detector's and the geometry criterion's bounds are quantiles of held-out
in-distribution studies' values: each training patient's from a criterion fitted on the other
folds of patients (out of fold), each validation patient's from the criterion fitted on all
training patients; ``study_rate`` is shared between the two (``GEOMETRY_SHARE`` of it for the
geometry criterion), so together they flag at most that share of held-out studies. A slice is
flagged when any slice distance passes its bound; a study is flagged when at least
``study_share`` of its slices are, or when its study distance or its geometry value passes its
bound. A flag says the input differs from what the model learned from; it does not say the
prediction is wrong, and no flag does not say it is right.

Drift compares a batch's distribution of a value (study OOD scores, predicted probabilities)
with the same value on the validation slices: the population stability index (``psi``) and
the two-sample Kolmogorov-Smirnov statistic (``ks_statistic``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: a pixel belongs to the head when any channel reaches this level (0..255 input)
FOREGROUND_LEVEL = 10.0
HIST_BINS = 8
#: the intensity statistics are computed on every k-th pixel, k = input size // STATS_SIZE (at
#: least 1); the texture statistics (sharpness, high frequencies, stripes) at full resolution
#: along the direction they measure (on every k-th line across it) and the level gaps on every
#: pixel, since stripe artefacts live at the frequencies that subsampling would fold away
STATS_SIZE = 64
#: the stripe statistics measure ripples of at most this many pixels (model input)
STRIPE_PERIOD = 8
#: a foreground value at or above this level counts as saturated
SATURATED_LEVEL = 250.0
#: the smallest spread a statistic is standardized by (one that barely varies in training)
MIN_SPREAD = 1e-3
#: the features detector keeps at most this many principal components
MAX_COMPONENTS = 32
#: the study detector's correlation is shrunk this share of the way to the identity (chosen with
#: ``ood_study_rate`` by bench/ood_design.py on held-out training patients)
STUDY_SHRINKAGE = 0.8
#: folds of training patients the study bound's out-of-fold distances come from (at most one
#: patient per fold when there are fewer)
STUDY_FOLDS = 5
#: fewer training patients than this: no study detector (its bound would mean nothing)
MIN_STUDIES = 8
#: the geometry criterion's statistics: where the head lies in the frame, which way it is
#: elongated and how far it reaches (a turned or badly cropped study)
GEOMETRY_STATS = ("head_centre_x", "head_centre_y", "head_axis_cos", "head_axis_sin",
                  "head_extent_x", "head_extent_y")
#: the smallest spread (MAD scaled to a standard deviation) a geometry statistic's robust z is
#: taken with: 1 % of the frame (the statistics are fractions of it or ratios in -1..1)
GEOMETRY_MIN_SPREAD = 0.01
#: the share of ``study_rate`` (the held-out in-distribution studies allowed over a study-level
#: bound) given to the geometry criterion; the study detector has the rest, so the two together
#: flag at most ``study_rate`` of them. Small: turned and cropped studies lie far past the
#: held-out studies' values, so a lower bound gains little, while the study detector keeps most
#: of the rate for blur and a missing channel (chosen by bench/ood_design.py --split)
GEOMETRY_SHARE = 0.2
#: drift bound for the population stability index (0.25: a shift worth acting on)
PSI_BOUND = 0.25
#: how many reference values are kept for drift comparisons
DRIFT_SAMPLE = 2000

_CHANNELS = ("pre", "flair", "post")
INPUT_STAT_NAMES: tuple[str, ...] = (
    "foreground_fraction",
    *(f"{c}_mean" for c in _CHANNELS),
    *(f"{c}_std" for c in _CHANNELS),
    *(f"{c}_edge" for c in _CHANNELS),
    *(f"{c}_hist{b}" for c in _CHANNELS for b in range(HIST_BINS)),
    "corr_pre_flair", "corr_pre_post", "corr_flair_post",
    "saturated",  # share of foreground values at SATURATED_LEVEL or above (largest channel)
    "head_aspect",  # log of the head's spread across over its spread down the frame
    "head_border",  # share of the frame's outer ring inside the head (a cropped study)
    # the head's outline (``head_mask``): centroid offset from the frame's centre, in frame
    # widths / heights; elongation along the frame's axes ((Ixx - Iyy) / (Ixx + Iyy) of its
    # second moments) and along the diagonals (2 Ixy / (Ixx + Iyy)), i.e. its eccentricity
    # times the cos / sin of twice its principal axis's angle (no jump for a round head);
    # extent (2nd to 98th percentile of its pixels) across / down the frame, in frame fractions
    "head_centre_x", "head_centre_y", "head_axis_cos", "head_axis_sin",
    "head_extent_x", "head_extent_y",
    "sharpness_x", "sharpness_y",  # mean |first difference| / spread over the head (blur)
    "highfreq_x", "highfreq_y",  # mean |second difference| / mean |first difference|
    "stripe_x", "stripe_y",  # short-period ripple of the head's column / row profile
    "level_gaps",  # share of empty grey levels between the 2nd and 98th percentiles
)


def input_statistics(x: np.ndarray) -> np.ndarray:
    """N x D statistics (``INPUT_STAT_NAMES``) of model-input slices (N x S x S x 3, 0..255).

    ``x`` is what the classifier takes: resized and intensity-mapped as the model version was
    trained (``brain_tumor.scoring.engines.study_input`` at scoring, the normalized training
    arrays at fit), so fit and scoring describe the same input.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"slices must be N x S x S x 3, received shape {x.shape}")
    step = max(1, min(x.shape[1], x.shape[2]) // STATS_SIZE)
    out = np.zeros((x.shape[0], len(INPUT_STAT_NAMES)), np.float64)
    # every step-th pixel for the intensity statistics: they hold, the cost drops
    for n, img in enumerate(x[:, ::step, ::step]):
        fg = img.max(axis=-1) >= FOREGROUND_LEVEL
        row: list[float] = [float(fg.mean())]
        vals = img[fg] if fg.any() else np.zeros((1, 3), np.float32)
        row += [float(v) for v in vals.mean(axis=0) / 255.0]
        row += [float(v) for v in vals.std(axis=0) / 255.0]
        grad_y = np.abs(np.diff(img, axis=0))[:, :-1][fg[:-1, :-1]]
        grad_x = np.abs(np.diff(img, axis=1))[:-1, :][fg[:-1, :-1]]
        edge = ((grad_y.mean(axis=0) + grad_x.mean(axis=0)) / 255.0 if grad_y.size
                else np.zeros(3))
        row += [float(v) for v in edge]
        for c in range(3):
            hist, _ = np.histogram(vals[:, c], bins=HIST_BINS, range=(0.0, 256.0))
            row += [float(v) for v in hist / max(1, len(vals))]
        row += _correlations(vals)
        row.append(float((vals >= SATURATED_LEVEL).mean(axis=0).max()))
        row += _shape(fg)
        row += _geometry(head_mask(img))
        out[n, :len(row)] = row
    out[:, -7:] = _texture(x)  # the last seven names, sharpness_x .. level_gaps
    return out


def _shape(fg: np.ndarray) -> list[float]:
    """Head aspect (log spread across / down) and the share of the frame's outer ring in it."""
    ys, xs = np.nonzero(fg)
    aspect = (float(np.log((xs.std() + 1.0) / (ys.std() + 1.0))) if len(xs) > 1 else 0.0)
    ring = np.concatenate([fg[0], fg[-1], fg[1:-1, 0], fg[1:-1, -1]])
    return [aspect, float(ring.mean())]


def head_mask(img: np.ndarray) -> np.ndarray:
    """H x W bool: the head's outline in one model-input slice (H x W x 3, 0..255).

    A pixel is foreground when a channel differs by FOREGROUND_LEVEL or more from that channel's
    background, the median of the frame's outer ring (a constant offset in one channel is not
    head); only the largest 8-connected part is kept (background speckle dropped), its holes
    filled (dark tissue inside the head is head).
    """
    img = np.asarray(img, np.float32)
    ring = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    fg = (np.abs(img - np.median(ring, axis=0)).max(axis=-1) >= FOREGROUND_LEVEL)
    count, labels, parts, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8),
                                                                connectivity=8)
    if count <= 1:
        return fg
    head = labels == 1 + int(np.argmax(parts[1:, cv2.CC_STAT_AREA]))
    outside = np.pad(~head, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(outside, None, (0, 0), 2)  # the background reachable from the frame's edge
    return head | (outside[1:-1, 1:-1] == 1)


def _geometry(head: np.ndarray) -> list[float]:
    """Centroid offset, elongation (axis cos, sin) and extent of a head mask (see
    ``INPUT_STAT_NAMES``); zeros for fewer than 16 head pixels."""
    ys, xs = np.nonzero(head)
    if len(xs) < 16:
        return [0.0] * 6
    h, w = head.shape
    dx, dy = xs - xs.mean(), ys - ys.mean()
    ixx, iyy, ixy = float(np.mean(dx * dx)), float(np.mean(dy * dy)), float(np.mean(dx * dy))
    total = max(ixx + iyy, 1e-9)
    return [float(xs.mean() + 0.5) / w - 0.5, float(ys.mean() + 0.5) / h - 0.5,
            (ixx - iyy) / total, 2.0 * ixy / total,
            _span(head.sum(axis=0)) / w, _span(head.sum(axis=1)) / h]


def _span(counts: np.ndarray) -> float:
    """Pixels from the 2nd to the 98th percentile of a profile of head pixel counts."""
    cum = np.cumsum(counts) / max(1, counts.sum())
    return float(np.searchsorted(cum, 0.98) - np.searchsorted(cum, 0.02))


def _texture(x: np.ndarray) -> np.ndarray:
    """N x 7: sharpness, high-frequency ratio and stripe ripple along x and y, and level gaps,
    over each slice's head (zeros for a slice with fewer than 16 head pixels)."""
    fg = x.max(axis=-1) >= FOREGROUND_LEVEL
    gray = x.mean(axis=-1, dtype=np.float32)
    step = max(1, min(x.shape[1], x.shape[2]) // STATS_SIZE)
    sub, sub_fg = gray[:, ::step, ::step], fg[:, ::step, ::step]
    count = sub_fg.sum(axis=(1, 2))
    n = np.maximum(count, 1)
    centre = (sub * sub_fg).sum(axis=(1, 2)) / n
    spread = np.sqrt((((sub - centre[:, None, None]) ** 2) * sub_fg).sum(axis=(1, 2)) / n) + 1.0
    sharp, high, stripe = [], [], []
    # each direction at full resolution along it, on every step-th line across it
    for axis in (2, 1):  # x (along rows), then y (along columns)
        g, m = ((gray[:, ::step], fg[:, ::step]) if axis == 2 else
                (gray[:, :, ::step].transpose(0, 2, 1), fg[:, :, ::step].transpose(0, 2, 1)))
        m1 = m[:, :, 1:] & m[:, :, :-1]
        d1 = ((np.abs(g[:, :, 1:] - g[:, :, :-1]) * m1).sum(axis=(1, 2))
              / np.maximum(m1.sum(axis=(1, 2)), 1))
        m2 = m[:, :, 2:] & m[:, :, :-2]
        d2 = ((np.abs(g[:, :, 2:] - 2.0 * g[:, :, 1:-1] + g[:, :, :-2]) * m2).sum(axis=(1, 2))
              / np.maximum(m2.sum(axis=(1, 2)), 1))
        sharp.append(d1 / spread)
        high.append(np.where(m2.any(axis=(1, 2)), d2 / (d1 + 1e-3), 0.0))
        stripe.append([_stripe_ripple(g[k], m[k], float(spread[k])) for k in range(len(x))])
    out = np.column_stack([*sharp, *high, *stripe, _level_gaps(x, fg)])
    out[fg.sum(axis=(1, 2)) < 16] = 0.0
    return out


def _stripe_ripple(g: np.ndarray, m: np.ndarray, spread: float) -> float:
    """Short-period (up to STRIPE_PERIOD pixels) ripple of the head's mean column profile, over
    the head's spread: stripes add up along the profile, anatomy and noise average out."""
    count = m.sum(axis=0)
    cols = count >= max(2, 0.25 * count.max())
    if cols.sum() < 2 * STRIPE_PERIOD:
        return 0.0
    profile = (g * m).sum(axis=0)[cols] / count[cols]
    trend = np.convolve(profile, np.ones(STRIPE_PERIOD) / STRIPE_PERIOD, mode="valid")
    start = (STRIPE_PERIOD - 1) // 2
    ripple = profile[start:start + len(trend)] - trend
    return float(np.sqrt(np.mean(ripple**2))) / spread


def _level_gaps(x: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """N: share of grey levels between each channel's 2nd and 98th percentile over the head
    that no value takes (a narrow band stretched to the full range leaves most levels empty);
    channel mean."""
    rows = np.broadcast_to(np.arange(len(x))[:, None, None], fg.shape)[fg] * 256
    gaps = np.zeros((len(x), 3))
    levels = np.arange(256)
    for c in range(3):
        values = np.clip(np.rint(x[..., c][fg]), 0, 255).astype(np.int64)
        counts = np.bincount(rows + values, minlength=256 * len(x)).reshape(-1, 256)
        cum = np.cumsum(counts, axis=1)
        low, high = (_percentile_level(cum, q) for q in (0.02, 0.98))
        inside = (levels >= low[:, None]) & (levels <= high[:, None])
        empty = ((counts == 0) & inside).sum(axis=1) / np.maximum(inside.sum(axis=1), 1)
        gaps[:, c] = np.where(high - low >= 2, empty, 0.0)
    return gaps.mean(axis=1)


def _percentile_level(cum: np.ndarray, q: float) -> np.ndarray:
    """Per row, the q-quantile (linear interpolation, truncated) of values whose cumulative
    counts over the levels 0..255 are ``cum`` (N x 256); 0 for a row without values."""
    total = cum[:, -1]
    pos = q * np.maximum(total - 1, 0)
    j = np.floor(pos)
    low = (cum <= j[:, None]).sum(axis=1)
    high = (cum <= np.minimum(j + 1, np.maximum(total - 1, 0))[:, None]).sum(axis=1)
    return np.where(total > 0, (low + (pos - j) * (high - low)).astype(np.int64), 0)


def _correlations(vals: np.ndarray) -> list[float]:
    """Pearson correlation of the three channel pairs over the foreground (0 when flat)."""
    result = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        sa, sb = vals[:, a].std(), vals[:, b].std()
        if sa < 1e-6 or sb < 1e-6:
            result.append(0.0)
        else:
            result.append(float(np.mean((vals[:, a] - vals[:, a].mean())
                                        * (vals[:, b] - vals[:, b].mean())) / (sa * sb)))
    return result


@dataclass
class Detector:
    """One distance: a centre, a whitening matrix, and the bound set on validation slices."""

    name: str
    mean: np.ndarray  # D
    whiten: np.ndarray  # D x K: (v - mean) @ whiten has identity covariance on training slices
    bound: float = float("inf")

    def distance(self, values: np.ndarray) -> np.ndarray:
        """N distances of N x D values to the training slices."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.mean.shape[0]:
            raise ValueError(f"{self.name}: expected N x {self.mean.shape[0]} values, received "
                             f"shape {values.shape}")
        return np.linalg.norm((values - self.mean) @ self.whiten, axis=1)


def fit_input_detector(train_stats: np.ndarray) -> Detector:
    """Mahalanobis distance on input statistics: each statistic standardized on the training
    slices (spread at least MIN_SPREAD), then their correlation shrunk by Ledoit-Wolf, so that
    the shrinkage weighs statistics of small and large scale alike."""
    from sklearn.covariance import LedoitWolf

    train_stats = _at_least(train_stats, 2, "input statistics")
    mean = train_stats.mean(axis=0)
    scale = np.maximum(train_stats.std(axis=0), MIN_SPREAD)
    cov = LedoitWolf().fit((train_stats - mean) / scale).covariance_
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, 1e-9 * max(1.0, float(vals.max())))
    return Detector("input", mean, vecs / np.sqrt(vals) / scale[:, None])


def fit_feature_detector(train_features: np.ndarray,
                         max_components: int = MAX_COMPONENTS) -> Detector:
    """Whitened projection on the training features' leading principal components."""
    train_features = _at_least(train_features, 3, "features")
    mean = train_features.mean(axis=0)
    _, sing, vt = np.linalg.svd(train_features - mean, full_matrices=False)
    k = int(min(max_components, len(sing) - 1, np.sum(sing > 1e-8 * sing[0])))
    if k < 1:
        raise ValueError("features: the training slices' features do not vary")
    scale = sing[:k] / np.sqrt(len(train_features) - 1)
    return Detector("features", mean, vt[:k].T / scale)


def _at_least(values: np.ndarray, rows: int, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) < rows:
        raise ValueError(f"{what}: need at least {rows} training slices as rows, received shape "
                         f"{values.shape}")
    return values


def set_bound(detector: Detector, validation_values: np.ndarray, slice_rate: float) -> float:
    """Set the bound to the (1 - slice_rate) quantile of the validation slices' distances."""
    if not 0.0 < slice_rate < 1.0:
        raise ValueError(f"slice_rate must be in (0, 1), received {slice_rate}")
    dist = detector.distance(validation_values)
    if len(dist) == 0:
        raise ValueError("no validation slices to set the bound on")
    detector.bound = float(np.quantile(dist, 1.0 - slice_rate))
    return detector.bound


def study_summary(stats: np.ndarray) -> np.ndarray:
    """D: the median over a study's slices (N x D input statistics) of each statistic."""
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 2 or len(stats) == 0:
        raise ValueError(f"a study's statistics must be N x D with N >= 1, received shape "
                         f"{stats.shape}")
    return np.median(stats, axis=0)


def study_summaries(stats: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """S x D: ``study_summary`` of each patient's slices, patients in sorted order."""
    stats, patients = np.asarray(stats, dtype=np.float64), np.asarray(patients)
    if stats.ndim != 2 or patients.shape != (len(stats),):
        raise ValueError(f"need N x D statistics and N patient ids, received shapes "
                         f"{stats.shape} and {patients.shape}")
    return np.array([study_summary(stats[patients == p]) for p in np.unique(patients)])


def fit_study_detector(summaries: np.ndarray, shrinkage: float = STUDY_SHRINKAGE) -> Detector:
    """Mahalanobis distance on study summaries (S x D): each standardized on the training
    studies (spread at least MIN_SPREAD), their correlation shrunk ``shrinkage`` of the way to
    the identity."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], received {shrinkage}")
    summaries = _at_least(summaries, 3, "study summaries")
    mean = summaries.mean(axis=0)
    scale = np.maximum(summaries.std(axis=0), MIN_SPREAD)
    corr = np.cov((summaries - mean) / scale, rowvar=False, bias=True)
    cov = (1.0 - shrinkage) * corr + shrinkage * np.eye(len(mean)) * np.trace(corr) / len(mean)
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, 1e-9 * max(1.0, float(vals.max())))
    return Detector("study", mean, vecs / np.sqrt(vals) / scale[:, None])


def patient_folds(count: int, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` (at most ``count``) disjoint, sorted index sets covering range(count), dealt
    after a seeded shuffle."""
    if count < 2 or folds < 2:
        raise ValueError(f"need at least 2 items and 2 folds, received {count} and {folds}")
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(order[k::min(folds, count)]) for k in range(min(folds, count))]


class StudyCriterion(Protocol):
    """A study-level criterion: one value per study summary, and the bound it is held to."""

    bound: float

    def distance(self, values: np.ndarray) -> np.ndarray:
        """S values of S x D study summaries."""
        ...


def out_of_fold_distances(summaries: np.ndarray, folds: int = STUDY_FOLDS, seed: int = 0,
                          fit: Callable[[np.ndarray], StudyCriterion] | None = None
                          ) -> np.ndarray:
    """S: each study's value under a criterion ``fit`` on the other folds' studies (default:
    the study detector, ``fit_study_detector``)."""
    fit = fit_study_detector if fit is None else fit
    summaries = _at_least(summaries, MIN_STUDIES, "study summaries")
    out = np.zeros(len(summaries))
    for held in patient_folds(len(summaries), folds, seed):
        rest = np.setdiff1d(np.arange(len(summaries)), held)
        out[held] = fit(summaries[rest]).distance(summaries[held])
    return out


def fit_study(train_summaries: np.ndarray, validation_summaries: np.ndarray, study_rate: float,
              folds: int = STUDY_FOLDS, seed: int = 0) -> tuple[Detector, np.ndarray]:
    """The study detector fitted on all training studies, and the held-out in-distribution
    distances its bound is the (1 - study_rate) quantile of: the training studies' out-of-fold
    distances and the validation studies' distances."""
    detector = fit_study_detector(train_summaries)
    return detector, _bound_held_out(detector, fit_study_detector, train_summaries,
                                     validation_summaries, study_rate, folds, seed)


def fit_geometry(train_summaries: np.ndarray, validation_summaries: np.ndarray, rate: float,
                 folds: int = STUDY_FOLDS, seed: int = 0) -> tuple[GeometryCheck, np.ndarray]:
    """The geometry criterion fitted on all training studies, its bound the (1 - rate)
    quantile of held-out in-distribution values (as ``fit_study``'s)."""
    check = fit_geometry_check(train_summaries)
    return check, _bound_held_out(check, fit_geometry_check, train_summaries,
                                  validation_summaries, rate, folds, seed)


def _bound_held_out(criterion: StudyCriterion, fit: Callable[[np.ndarray], StudyCriterion],
                    train_summaries: np.ndarray, validation_summaries: np.ndarray, rate: float,
                    folds: int, seed: int) -> np.ndarray:
    """Set the criterion's bound to the (1 - rate) quantile of the training studies' out-of-fold
    values and the validation studies' values; those values, sorted."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"study_rate must be in (0, 1), received {rate}")
    held_out = np.concatenate([out_of_fold_distances(train_summaries, folds, seed, fit),
                               criterion.distance(validation_summaries)])
    criterion.bound = float(np.quantile(held_out, 1.0 - rate))
    return np.sort(held_out)


@dataclass
class GeometryCheck:
    """Where and how the head lies in the frame, against the training studies: for each of a
    few head-geometry statistics, the robust z of a study's median (its distance to the
    training studies' median over their spread, the MAD scaled to a standard deviation and at
    least GEOMETRY_MIN_SPREAD); the criterion's value is the largest |z|."""

    names: tuple[str, ...]  # statistics of INPUT_STAT_NAMES
    centre: np.ndarray  # G: the training studies' median of each
    scale: np.ndarray  # G: their spread
    bound: float = float("inf")

    def z(self, summaries: np.ndarray) -> np.ndarray:
        """S x G robust z of S x D study summaries (D = len(INPUT_STAT_NAMES))."""
        summaries = np.asarray(summaries, dtype=np.float64)
        if summaries.ndim != 2 or summaries.shape[1] != len(INPUT_STAT_NAMES):
            raise ValueError(f"geometry: expected S x {len(INPUT_STAT_NAMES)} study summaries, "
                             f"received shape {summaries.shape}")
        return (summaries[:, geometry_columns(self.names)] - self.centre) / self.scale

    def distance(self, summaries: np.ndarray) -> np.ndarray:
        """S: the largest |robust z| of each study summary."""
        return np.abs(self.z(summaries)).max(axis=1)


def geometry_columns(names: tuple[str, ...]) -> list[int]:
    """The columns of INPUT_STAT_NAMES the named statistics are."""
    unknown = [n for n in names if n not in INPUT_STAT_NAMES]
    if unknown or not names:
        raise ValueError(f"geometry statistics must be some of INPUT_STAT_NAMES, received "
                         f"{list(names)}")
    return [INPUT_STAT_NAMES.index(n) for n in names]


def fit_geometry_check(summaries: np.ndarray, names: tuple[str, ...] = GEOMETRY_STATS,
                       min_spread: float = GEOMETRY_MIN_SPREAD) -> GeometryCheck:
    """The geometry criterion's centre and spread on training study summaries (S x D)."""
    if min_spread <= 0:
        raise ValueError(f"min_spread must be positive, received {min_spread}")
    summaries = _at_least(summaries, 3, "study summaries")
    if summaries.shape[1] != len(INPUT_STAT_NAMES):
        raise ValueError(f"geometry: expected S x {len(INPUT_STAT_NAMES)} study summaries, "
                         f"received shape {summaries.shape}")
    values = summaries[:, geometry_columns(names)]
    centre = np.median(values, axis=0)
    mad = 1.4826 * np.median(np.abs(values - centre), axis=0)
    return GeometryCheck(tuple(names), centre, np.maximum(mad, min_spread))


@dataclass
class Reference:
    """What a model version's OOD check needs: detectors with bounds, and drift references."""

    detectors: list[Detector]
    slice_rate: float  # the share of validation slices allowed over each bound
    study_share: float  # a study is flagged when this share of its slices is
    validation: dict[str, np.ndarray] = field(default_factory=dict)  # drift reference samples
    facts: dict[str, Any] = field(default_factory=dict)  # slices used, per split
    #: the intensity mapping of the model input the input statistics were taken on (the model
    #: version's ``intensity_norm``); None: a reference that does not state it
    input_norm: str | None = None
    #: the study detector (input statistics' medians) and the share of held-out in-distribution
    #: studies allowed over a study-level bound (the study detector's and the geometry
    #: criterion's together); None: a reference without one (slice rules alone)
    study: Detector | None = None
    study_rate: float | None = None
    #: the geometry criterion (``GeometryCheck``), bounded at GEOMETRY_SHARE of ``study_rate``;
    #: None: a reference without one
    geometry: GeometryCheck | None = None

    def detector(self, name: str) -> Detector | None:
        """The detector named ``name``, or None."""
        return next((d for d in self.detectors if d.name == name), None)

    def to_bytes(self) -> bytes:
        """The reference as one ``.npz`` file."""
        arrays: dict[str, np.ndarray] = {
            "names": np.array([d.name for d in self.detectors]),
            "bounds": np.array([d.bound for d in self.detectors]),
            "slice_rate": np.array(self.slice_rate), "study_share": np.array(self.study_share),
            "facts": np.array(repr(sorted(self.facts.items()))),
        }
        if self.input_norm is not None:
            arrays["input_norm"] = np.array(self.input_norm)
        for d in self.detectors:
            arrays[f"{d.name}__mean"], arrays[f"{d.name}__whiten"] = d.mean, d.whiten
        if self.study is not None:
            arrays["study__mean"], arrays["study__whiten"] = self.study.mean, self.study.whiten
            arrays["study__bound"] = np.array(self.study.bound)
            arrays["study__rate"] = np.array(np.nan if self.study_rate is None
                                             else self.study_rate)
        if self.geometry is not None:
            arrays["geometry__names"] = np.array(self.geometry.names)
            arrays["geometry__centre"] = self.geometry.centre
            arrays["geometry__scale"] = self.geometry.scale
            arrays["geometry__bound"] = np.array(self.geometry.bound)
        for key, values in self.validation.items():
            arrays[f"validation__{key}"] = values
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Reference:
        """Read a reference written by ``to_bytes``."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            detectors = [Detector(str(n), z[f"{n}__mean"], z[f"{n}__whiten"], float(b))
                         for n, b in zip(z["names"], z["bounds"], strict=True)]
            validation = {k.split("__", 1)[1]: z[k] for k in z.files
                          if k.startswith("validation__")}
            norm = str(z["input_norm"]) if "input_norm" in z.files else None
            study, study_rate = None, None
            if "study__mean" in z.files:
                study = Detector("study", z["study__mean"], z["study__whiten"],
                                 float(z["study__bound"]))
                rate = float(z["study__rate"])
                study_rate = None if np.isnan(rate) else rate
            geometry = _read_geometry(z)
            return cls(detectors, float(z["slice_rate"]), float(z["study_share"]), validation,
                       input_norm=norm, study=study, study_rate=study_rate, geometry=geometry)

    def set_study_rate(self, study_rate: float) -> float:
        """Set the study-level bounds for ``study_rate`` from the held-out in-distribution
        studies' values the fit kept: the study detector's to the (1 - study_rate) quantile of
        ``validation["study_distance"]``, or with a geometry criterion the study detector's at
        (1 - GEOMETRY_SHARE) of the rate and the geometry criterion's at GEOMETRY_SHARE of it
        (of ``validation["geometry_score"]``). Returns the study detector's bound."""
        if self.study is None or "study_distance" not in self.validation:
            raise ValueError("the reference has no study detector with held-out distances")
        if not 0.0 < study_rate < 1.0:
            raise ValueError(f"study_rate must be in (0, 1), received {study_rate}")
        geometry_rate = 0.0
        if self.geometry is not None and "geometry_score" in self.validation:
            geometry_rate = GEOMETRY_SHARE * study_rate
            self.geometry.bound = float(np.quantile(self.validation["geometry_score"],
                                                    1 - geometry_rate))
        self.study.bound = float(np.quantile(self.validation["study_distance"],
                                             1 - (study_rate - geometry_rate)))
        self.study_rate = study_rate
        return self.study.bound

    def judges_inputs(self) -> bool:
        """Whether its input detector describes this code's input statistics (``input_norm``
        stated, one column per ``INPUT_STAT_NAMES``)."""
        det = self.detector("input")
        return (det is not None and self.input_norm is not None
                and det.mean.shape[0] == len(INPUT_STAT_NAMES))


def _read_geometry(z: Any) -> GeometryCheck | None:
    """The geometry criterion of a stored reference; None when it has none, or (logged) when it
    names statistics this code does not compute."""
    if "geometry__names" not in z.files:
        return None
    names = tuple(str(n) for n in z["geometry__names"])
    unknown = [n for n in names if n not in INPUT_STAT_NAMES]
    if unknown:
        log.warning("the reference's geometry criterion names statistics this code does not "
                    "compute (%s); it is left out", unknown)
        return None
    return GeometryCheck(names, z["geometry__centre"], z["geometry__scale"],
                         float(z["geometry__bound"]))


def fit_reference(train: dict[str, np.ndarray], validation: dict[str, np.ndarray], *,
                  slice_rate: float = 0.01, study_share: float = 0.6,
                  validation_prob: np.ndarray | None = None,
                  input_norm: str | None = None, study_rate: float | None = None,
                  train_patients: np.ndarray | None = None,
                  validation_patients: np.ndarray | None = None,
                  study_train: np.ndarray | None = None, seed: int = 0) -> Reference:
    """Fit each detector on the training slices and bound it on the validation slices.

    ``train`` and ``validation`` map a detector ("input", optionally "features") to N x D
    values of that split's slices; ``validation_prob`` (the validation slices' tumor
    probabilities) becomes the drift reference of predicted probabilities; ``input_norm`` names
    the intensity mapping of the model input the "input" statistics were taken on.

    With ``study_rate``, the study detector is fitted too (``fit_study``, folds dealt with
    ``seed``): on ``study_train`` (the input statistics of every training slice; default
    ``train["input"]``) grouped by ``train_patients``, and ``validation["input"]`` grouped by
    ``validation_patients`` (one patient id per row of each); with fewer than MIN_STUDIES
    training patients it is left out (logged). When the input statistics are this code's (one
    column per ``INPUT_STAT_NAMES``), the geometry criterion is fitted beside it on the same
    studies (``fit_geometry``), and ``study_rate`` is shared: GEOMETRY_SHARE of it for the
    geometry criterion, the rest for the study detector.
    """
    if not 0.0 < study_share <= 1.0:
        raise ValueError(f"study_share must be in (0, 1], received {study_share}")
    study, held_out, geometry, geometry_held_out = None, None, None, None
    if study_rate is not None:
        study, held_out, geometry, geometry_held_out = _fit_study_of(
            train["input"] if study_train is None else study_train, train_patients,
            validation.get("input"), validation_patients, study_rate, seed)
    fitters = {"input": fit_input_detector, "features": fit_feature_detector}
    unknown = sorted(set(train) - set(fitters))
    if unknown or "input" not in train:
        raise ValueError(f"detectors are 'input' (required) and 'features', received "
                         f"{sorted(train)}")
    detectors, drift = [], {}
    for name in ("input", "features"):
        if name not in train:
            continue
        if name not in validation:
            raise ValueError(f"{name}: validation slices are needed to set the bound")
        det = fitters[name](train[name])
        set_bound(det, validation[name], slice_rate)
        detectors.append(det)
        drift[f"{name}_distance"] = _sample(det.distance(validation[name]) / det.bound)
    facts = {"train_slices": len(train["input"]), "validation_slices": len(validation["input"])}
    ref = Reference(detectors, slice_rate, study_share, drift, facts, input_norm=input_norm,
                    study=study, study_rate=None if study is None else study_rate,
                    geometry=geometry)
    ref.validation["study_score"] = _sample(np.max(
        [ref.validation[f"{d.name}_distance"] for d in detectors], axis=0))
    if validation_prob is not None:
        ref.validation["probability"] = _sample(np.asarray(validation_prob, np.float64))
    if held_out is not None:
        ref.validation["study_distance"] = held_out
        ref.facts.update(train_studies=len(np.unique(train_patients)),
                         validation_studies=len(np.unique(validation_patients)))
    if geometry_held_out is not None:
        ref.validation["geometry_score"] = geometry_held_out
    return ref


def _fit_study_of(train_stats: np.ndarray, train_patients: np.ndarray | None,
                  validation_stats: np.ndarray | None, validation_patients: np.ndarray | None,
                  study_rate: float, seed: int
                  ) -> tuple[Detector | None, np.ndarray | None, GeometryCheck | None,
                             np.ndarray | None]:
    """``fit_study`` and (input statistics of this code) ``fit_geometry`` on slices grouped by
    patient: (study detector, its held-out distances, geometry criterion, its held-out values),
    the geometry pair None without one, all None with too few training patients."""
    if train_patients is None or validation_patients is None or validation_stats is None:
        raise ValueError("the study detector needs the training and validation slices' patient "
                         "ids and input statistics")
    if not 0.0 < study_rate < 1.0:
        raise ValueError(f"study_rate must be in (0, 1), received {study_rate}")
    train_sum = study_summaries(train_stats, train_patients)
    if len(train_sum) < MIN_STUDIES:
        log.info("study detector left out: %d training patients, at least %d needed",
                 len(train_sum), MIN_STUDIES)
        return None, None, None, None
    val_sum = study_summaries(validation_stats, validation_patients)
    if train_sum.shape[1] != len(INPUT_STAT_NAMES):
        log.info("geometry criterion left out: %d input statistics, not this code's %d",
                 train_sum.shape[1], len(INPUT_STAT_NAMES))
        return (*fit_study(train_sum, val_sum, study_rate, seed=seed), None, None)
    geometry_rate = GEOMETRY_SHARE * study_rate
    return (*fit_study(train_sum, val_sum, study_rate - geometry_rate, seed=seed),
            *fit_geometry(train_sum, val_sum, geometry_rate, seed=seed))


def _sample(values: np.ndarray, size: int = DRIFT_SAMPLE) -> np.ndarray:
    """At most ``size`` values, evenly spread over the sorted values."""
    values = np.sort(np.asarray(values, np.float64).reshape(-1))
    if len(values) <= size:
        return values
    return values[np.linspace(0, len(values) - 1, size).round().astype(int)]


@dataclass
class OodResult:
    """The check's outcome for one study."""

    slice_score: np.ndarray  # N: max over detectors of distance / bound (> 1: flagged)
    slice_flag: np.ndarray  # N bool
    flagged: bool  # the study
    score: float  # the study's score: median slice score
    reasons: list[dict[str, Any]]  # per detector over its bound: statistic, value, bound, share
    #: the study detector's distance (None: no study detector, or no input statistics given)
    study_distance: float | None = None
    #: the geometry criterion's value, the largest |robust z| (None: no criterion, or no input
    #: statistics of this code given)
    geometry_score: float | None = None

    def summary(self) -> dict[str, Any]:
        """The fields summary.json carries."""
        return {"out_of_distribution": self.flagged, "ood_score": round(self.score, 4),
                "ood_slices": int(self.slice_flag.sum()), "ood_reasons": self.reasons}


def check(reference: Reference, values: dict[str, np.ndarray]) -> OodResult:
    """Score one study's slices (``values``: detector name -> N x D) against the reference: the
    slice detectors' share rule, and the study detector and the geometry criterion on the input
    statistics' medians. A geometry statistic over the bound gives the reason
    ``<statistic>_robust_z``, its value the study's |robust z|."""
    scores, reasons = [], []
    for det in reference.detectors:
        if det.name not in values:
            continue
        dist = det.distance(values[det.name])
        ratio = dist / det.bound if det.bound > 0 else np.full(len(dist), np.inf)
        scores.append(ratio)
        share = float(np.mean(ratio > 1.0))
        if share >= reference.study_share:
            reasons.append({"statistic": f"{det.name}_distance",
                            "value": round(float(np.median(dist)), 4),
                            "bound": round(det.bound, 4), "slices_over": round(share, 4)})
    if not scores:
        raise ValueError(f"no detector of the reference ({[d.name for d in reference.detectors]})"
                         f" in the values given ({sorted(values)})")
    slice_score = np.max(scores, axis=0)
    flag = slice_score > 1.0
    study_distance, geometry_score = None, None
    summary = study_summary(values["input"])[None, :] if "input" in values else None
    if reference.study is not None and summary is not None:
        study_distance = float(reference.study.distance(summary)[0])
        if study_distance > reference.study.bound:
            reasons.append({"statistic": "study_distance", "value": round(study_distance, 4),
                            "bound": round(reference.study.bound, 4),
                            "slices_over": round(float(flag.mean()), 4)})
    geometry = reference.geometry
    if (geometry is not None and summary is not None
            and summary.shape[1] == len(INPUT_STAT_NAMES)):
        z = np.abs(geometry.z(summary)[0])
        geometry_score = float(z.max())
        for k in np.argsort(-z):
            if z[k] > geometry.bound:
                reasons.append({"statistic": f"{geometry.names[k]}_robust_z",
                                "value": round(float(z[k]), 4),
                                "bound": round(geometry.bound, 4),
                                "slices_over": round(float(flag.mean()), 4)})
    return OodResult(slice_score, flag, bool(reasons), float(np.median(slice_score)), reasons,
                     study_distance, geometry_score)


def psi(reference: np.ndarray, sample: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``sample`` against ``reference`` (reference deciles)."""
    reference = np.asarray(reference, np.float64).reshape(-1)
    sample = np.asarray(sample, np.float64).reshape(-1)
    if len(reference) < bins or len(sample) == 0:
        raise ValueError(f"psi needs >= {bins} reference values and a sample, received "
                         f"{len(reference)} and {len(sample)}")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, reference, side="right"),
                            minlength=len(edges) + 1) / len(reference)
    new_share = np.bincount(np.searchsorted(edges, sample, side="right"),
                            minlength=len(edges) + 1) / len(sample)
    ref_share, new_share = np.maximum(ref_share, 1e-4), np.maximum(new_share, 1e-4)
    return float(np.sum((new_share - ref_share) * np.log(new_share / ref_share)))


def ks_statistic(reference: np.ndarray, sample: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two CDFs."""
    reference = np.sort(np.asarray(reference, np.float64).reshape(-1))
    sample = np.sort(np.asarray(sample, np.float64).reshape(-1))
    if len(reference) == 0 or len(sample) == 0:
        raise ValueError("ks_statistic needs two non-empty samples")
    grid = np.concatenate([reference, sample])
    cdf_ref = np.searchsorted(reference, grid, side="right") / len(reference)
    cdf_new = np.searchsorted(sample, grid, side="right") / len(sample)
    return float(np.max(np.abs(cdf_ref - cdf_new)))
