"""A small internet in network namespaces, for the end-to-end tests and the demo."""
