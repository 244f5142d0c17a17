"""The FedFace coordinator: FastAPI service, round engine and aggregation."""
