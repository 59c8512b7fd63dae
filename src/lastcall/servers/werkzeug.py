"""Werkzeug's development server: see ``lastcall._servers.werkzeug`` (kept for its importers)."""

from lastcall._servers.werkzeug import enable

__all__ = ("enable",)
