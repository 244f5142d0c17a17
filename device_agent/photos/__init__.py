"""On-device photo pipeline: MTCNN detection, five-point alignment, folder processing."""
