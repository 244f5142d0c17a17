"""Repositories: every SQL query of the service lives here. They take the
request's session and never commit: the caller owns the transaction."""
