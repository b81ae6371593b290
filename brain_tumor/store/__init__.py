"""Object storage: the S3 client and the stores that own each prefix's keys and records."""
