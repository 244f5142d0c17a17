"""Deployment tests: S3 blob store, container image, manifests."""
