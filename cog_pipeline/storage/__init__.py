"""Buckets: folders or S3, listings, ranged reads, atomic local writes, upload headers."""
