"""Ingest: TCIA exports in; a checked, relabeled dataset version and its patient split out."""
