"""Business logic. Services take the request's session and the app context,
use repositories for every query, and raise typed errors."""
