"""Code that both the coordinator and the device agent use: the tensor codec,
the wire schemas of the device API and the face model.

It must stay importable without the server's dependencies."""
