"""api/v1 package."""
