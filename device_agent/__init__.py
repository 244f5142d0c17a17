"""FedFace device agent: what runs on a phone (photos, local training, upload); never imports the server."""
