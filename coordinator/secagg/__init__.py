"""The server's side of SecAgg+ (`protocol`, pure) and its micro-benchmark (`bench`)."""
