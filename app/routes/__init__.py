"""Thin route functions: HTML pages and the versioned JSON API."""
