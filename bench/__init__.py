"""Benchmarks that print Markdown tables (`python -m bench`)."""
