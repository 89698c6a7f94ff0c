"""The clinician's web page and its JSON API (FastAPI)."""

from lungscope.serve.app import create_app

__all__ = ["create_app"]
