"""Segmenter training aimed at per-patient Dice: tumor oversampling, batch Dice + BCE, and the
per-patient validation Dice that picks the epoch."""

from pathlib import Path

import keras
import numpy as np
import pytest

from brain_tumor.ml.callbacks import PATIENT_DICE, PatientDice, patient_dice_scores
from brain_tumor.ml.inputs import SliceSequence, tumor_batch_order
from brain_tumor.ml.models import batch_dice_bce_loss, bce_dice_loss, segmenter_loss
from brain_tumor.ml.train import SEGMENTER_MONITOR, _best_epoch, make_callbacks
from brain_tumor.settings import load_settings


def test_tumor_batch_order_fills_each_batch_half_with_tumor_slices():
    is_tumor = np.zeros(100, bool)
    is_tumor[:10] = True  # 10% tumor slices, as rare as in the data or rarer
    order = tumor_batch_order(is_tumor, 8, 0.5, batches=13, rng=np.random.default_rng(0))
    batches = order.reshape(13, 8)
    assert (is_tumor[batches].sum(axis=1) == 4).all()
    tumor_rows = order[is_tumor[order]]
    assert set(tumor_rows.tolist()) == set(range(10))  # every tumor slice is used, over again
    assert len(set(order[~is_tumor[order]].tolist())) == 52  # tumor-free ones drawn once each
    with pytest.raises(ValueError, match="need tumor and tumor-free rows, received 0 and 5"):
        tumor_batch_order(np.zeros(5, bool), 2, 0.5, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"tumor_fraction must be in \(0, 1\), received 1.0"):
        tumor_batch_order(is_tumor, 8, 1.0, 1, np.random.default_rng(0))


def test_slice_sequence_oversamples_tumor_masks_and_keeps_epoch_length():
    n, size = 40, 8
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:6, 2:4, 2:4] = 1  # 6 tumor slices of 40
    seq = SliceSequence(images, masks, 10, masks_are_targets=True, shuffle=True, seed=3,
                        tumor_fraction=0.5)
    assert len(seq) == 4
    for i in range(len(seq)):
        _, y = seq[i]
        assert y.shape == (10, size, size, 1)
        assert int((y.reshape(10, -1).max(axis=1) > 0).sum()) == 5
    first = seq.order.copy()
    seq.on_epoch_end()
    assert not np.array_equal(first, seq.order)  # a new draw each epoch, set by the seed
    plain = SliceSequence(images, masks, 10, masks_are_targets=True, shuffle=True, seed=3)
    assert sorted(plain.order.tolist()) == list(range(n))  # fraction 0: a plain shuffle
    evaluation = SliceSequence(images, masks, 10, masks_are_targets=True, tumor_fraction=0.5)
    assert evaluation.order.tolist() == list(range(n))  # no shuffle: no oversampling either
    with pytest.raises(ValueError, match=r"tumor_fraction must be in \[0, 1\), received 1.5"):
        SliceSequence(images, masks, 10, masks_are_targets=True, shuffle=True,
                      tumor_fraction=1.5)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def test_batch_dice_bce_scores_the_batch_as_one_volume():
    y_true = np.zeros((2, 4, 4, 1), np.float32)
    y_true[0, :2, :2] = 1.0  # slice 0 has a 4-pixel tumor, slice 1 is empty
    perfect = y_true.copy()
    batch = _np(batch_dice_bce_loss(y_true, perfect))
    per_sample = _np(bce_dice_loss(y_true, perfect))
    # A perfect prediction of an empty slice costs nothing in the batch loss ...
    assert batch.shape == (2,) and batch == pytest.approx([0.0, 0.0], abs=1e-4)
    assert per_sample == pytest.approx([0.0, 0.0], abs=1e-4)
    # ... and one false pixel on the empty slice costs the batch Dice only that pixel:
    # 1 - (2*4 + 1) / (4 + 5 + 1) = 0.1, where the per-sample Dice of that slice is 1 - 1/2.
    speck = perfect.copy()
    speck[1, 3, 3] = 1.0
    bce = _np(keras.ops.mean(keras.ops.binary_crossentropy(y_true.reshape(2, -1),
                                                           speck.reshape(2, -1)), axis=-1))
    assert _np(batch_dice_bce_loss(y_true, speck)) == pytest.approx(bce + 0.1, abs=1e-4)
    assert _np(bce_dice_loss(y_true, speck))[1] == pytest.approx(bce[1] + 0.5, abs=1e-4)
    assert segmenter_loss("batch_dice_bce") is batch_dice_bce_loss
    assert segmenter_loss("per_sample_dice") is bce_dice_loss
    with pytest.raises(ValueError, match="received 'dice'"):
        segmenter_loss("dice")


def test_patient_dice_stacks_each_patients_slices():
    true = np.zeros((4, 2, 2), bool)
    pred = np.zeros((4, 2, 2), bool)
    true[0, 0, 0] = pred[0, 0, 0] = True  # A: 1 of 1 found on slice 0 ...
    pred[1, 1, 1] = True  # ... and one false pixel on slice 1: Dice 2*1/(1+2)
    true[2, 0, :] = True  # B: 2 true pixels, none found
    ids = np.array(["A", "A", "B", "C"])  # C: empty and predicted empty -> 1.0
    assert patient_dice_scores(ids, true, pred) == pytest.approx({"A": 2 / 3, "B": 0.0,
                                                                  "C": 1.0})


class _SetBias(keras.callbacks.Callback):
    """Sets the constant output of the one-layer model below per epoch (before it is scored)."""

    def __init__(self, biases: list[float]) -> None:
        super().__init__()
        self.biases = biases

    def on_epoch_end(self, epoch, logs=None) -> None:
        layer = self.model.get_layer("out")
        kernel, _ = layer.get_weights()
        layer.set_weights([np.zeros_like(kernel), np.array([self.biases[epoch]], np.float32)])


def test_patient_dice_callback_picks_checkpoints_and_restores_the_best_epoch(tmp_path: Path):
    keras.utils.set_random_seed(0)
    n, size = 6, 8
    images = np.ones((n, size, size, 3), np.float32)
    masks = np.ones((n, size, size), np.uint8)  # all tumor: an all-on prediction has Dice 1
    ids = np.array(["P1", "P1", "P1", "P2", "P2", "P2"])
    inputs = keras.Input((size, size, 3))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="out")(inputs)
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="binary_crossentropy")
    biases = [-10.0, 10.0, -10.0, -10.0, 10.0, 10.0]  # epoch 2 (1-based) is the only good one
    settings = load_settings(env={}, warmup_epochs=0, early_stopping_patience=2)
    dice = PatientDice(images, masks, ids, batch_size=4)
    callbacks = [_SetBias(biases), dice, *make_callbacks(tmp_path, "segmenter", settings, 0.0,
                                                         *SEGMENTER_MONITOR)]
    hist = model.fit(images, masks[..., None].astype(np.float32), epochs=6, batch_size=3,
                     callbacks=callbacks, verbose=0).history
    assert hist[PATIENT_DICE] == pytest.approx([0.0, 1.0, 0.0, 0.0], abs=1e-6)
    assert len(hist[PATIENT_DICE]) == 4  # patience 2 after epoch 2: stopped after epoch 4 of 6
    assert dice.best_epoch == 2 and _best_epoch(hist, *SEGMENTER_MONITOR) == 2
    assert dice.score() == pytest.approx(1.0)  # the best epoch's weights were restored
    saved = keras.models.clone_model(model)
    saved.load_weights(tmp_path / "segmenter.best.weights.h5")
    assert float(saved.get_layer("out").get_weights()[1][0]) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="received 6 images, 5 masks, 6 ids"):
        PatientDice(images, masks[:5], ids)
