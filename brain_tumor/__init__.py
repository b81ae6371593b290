"""Brain-tumor detection pipeline."""
