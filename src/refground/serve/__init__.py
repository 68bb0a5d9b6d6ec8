"""refground over HTTP: a FastAPI app (``refground serve``) with a web page at ``/``.

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart). See :func:`create_app`.
"""

from refground.serve.app import ServeConfig, create_app
from refground.serve.models import GrounderCache

__all__ = ["GrounderCache", "ServeConfig", "create_app"]
