"""Ingest: TCIA exports in, checked and relabeled slices, a dataset version and its patient split."""
