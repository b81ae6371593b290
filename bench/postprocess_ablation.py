"""Post-processing ablation on one trained model version: each rule's figures, no retraining.

  python bench/postprocess_ablation.py --model-version M [--home DIR] [--flip] [--test]
                                       [--json OUT]

Starts the quality benchmark's SeaweedFS server under --home (where `bench/quality.py run --home
DIR` left its dataset and model versions), predicts the model version's validation patients
once, and applies each rule (``brain_tumor.evaluation.tuning.ablation_rules``: the slice rule,
the whole-study rule with and without its component and minimum-area steps, the tuned one),
and with --flip the rule re-tuned on outputs averaged with their mirror images (flip test-time
augmentation). It also compares candidate slice scores for ranking slices (ROC-AUC): the
classifier's probability, the segmenter's peak, their mean, and the larger of the two (the
``tumor_score`` evaluation uses).
Validation figures decide; with --test the test patients' figures are printed beside them, to be
reported once, never to choose. Figures are per-patient Dice at the model's input size, and
sensitivity, specificity and false-positive slices per patient from each rule's final labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from quality import PROFILES, _server, _settings, emit, start_logging


def run(args: argparse.Namespace) -> dict:
    """The ablation of one model version (see the module docstring)."""
    from brain_tumor import steps
    from brain_tumor.evaluation.run import postprocess_ablation

    home = Path(args.home).resolve()
    server = _server(home)
    server.start()
    try:
        settings = _settings(server, home, dict(PROFILES[args.profile]))
        return postprocess_ablation(steps.open_store(settings), settings, args.model_version,
                                    include_test=args.test, flip=args.flip)
    finally:
        server.stop()


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-version", required=True, help="the trained model version")
    parser.add_argument("--home", default="bench/results/quality-home",
                        help="server data and model cache (shared with bench/quality.py)")
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES),
                        help="the quality profile it was trained in")
    parser.add_argument("--flip", action="store_true",
                        help="add flip test-time augmentation (re-tuned on validation)")
    parser.add_argument("--test", action="store_true",
                        help="also report the test patients' figures (once, beside validation)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    start_logging()
    result = run(args)
    emit(result, args.json, show=result["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
