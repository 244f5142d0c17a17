"""Persistence: SQLAlchemy models and repositories (Postgres is the source of
truth), the content-addressed blob store and Redis coordination state."""
