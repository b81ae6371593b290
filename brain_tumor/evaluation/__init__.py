"""Evaluation on held-out patients: metrics, the evaluation run, report and the promotion gate."""
