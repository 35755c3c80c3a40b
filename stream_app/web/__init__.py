"""The worker's HTTP side: JSON API, Prometheus metrics and the live dashboard.

:mod:`stream_app.web.api` registers everything on the Faust app's own web server
(``IMPORTANCE_WEB_HOST``:``IMPORTANCE_WEB_PORT``); ``static/`` holds the dashboard page
and the vendored chart library (uPlot, MIT, see ``static/uPlot.LICENSE``);
``openapi.json`` describes the API.
"""

from pathlib import Path

__all__ = ["OPENAPI_PATH", "STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.json"
