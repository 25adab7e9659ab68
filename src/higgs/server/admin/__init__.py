"""bosonserver's operator dashboard under ``/admin`` (docs/dashboard.md)."""
