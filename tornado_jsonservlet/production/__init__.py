"""Running in production: request IDs, metrics, graceful shutdown, several processes."""
