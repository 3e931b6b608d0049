"""``gdino serve``: Grounding DINO over HTTP with server-side dynamic batching (FastAPI + uvicorn,
the ``[serve]`` extra). See docs/serve.md.

- :mod:`gdino.serve.forward`: one forward for requests with different prompts.
- :mod:`gdino.serve.batcher`: bounded queue, batches of up to ``max_batch`` within ``max_wait_ms``.
- :mod:`gdino.serve.app`: the app factory (:func:`create_app`), middleware, error handlers.
- :mod:`gdino.serve.routes`: ``/v1/detect``, ``/v1/segment``, ``POST /`` (Hugging Face task), probes,
  ``/metrics``, ``/v1/info`` and the web page (``static/``).
"""

from gdino.serve.app import create_app
from gdino.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
