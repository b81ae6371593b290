"""What serves the embedded default and the tests: the demo, the embedded S3 server, synthetic
data."""
