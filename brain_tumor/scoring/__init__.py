"""Scoring incoming studies: reader, engine, post-processing and writers; batch planning."""
