"""MLflow tracking URIs: which ones work here, how to print them, and a bounded reachability
probe. Light on purpose (no mlflow import), so job validation and `critbatch check` stay fast;
the writer (tune_jobs) and the reader (analysis.loaders) both use it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import urllib.error
import urllib.parse
import urllib.request

# How long one request to a tracking server may take before we call it unreachable (seconds),
# and how many times MLflow's own client retries (its defaults, 120 s x 7 retries with backoff,
# made `analyze` against a closed port wait minutes).
HTTP_TIMEOUT_S = 10
HTTP_MAX_RETRIES = 2

# Database schemes MLflow's SQL store accepts, and the module SQLAlchemy loads for each
# (``scheme+driver://`` names the driver; plain ``scheme://`` means SQLAlchemy's default).
SQL_DRIVERS = {
    "postgresql": ("psycopg2", "psycopg2-binary"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "postgresql+psycopg": ("psycopg", "psycopg"),
    "postgresql+pg8000": ("pg8000", "pg8000"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+mysqldb": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "pymysql"),
    "mssql+pyodbc": ("pyodbc", "pyodbc"),
}


class TrackingUriError(ValueError):
    """A tracking URI that cannot work here; the message names the fix (and no password)."""


def redact_uri(uri: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``: what may be printed or logged."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", uri)


def bound_mlflow_http_timeouts() -> None:
    """Make MLflow's HTTP client give up in about a minute instead of many (env defaults only,
    so a user's own settings win). Call before the first request."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_MAX_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def check_uri_form(uri: str, field: str = "tracking.uri") -> None:
    """Refuse a URI MLflow cannot use here: an unknown scheme, or a database whose Python
    driver is not installed (found out only after Ray started, otherwise)."""
    shown = redact_uri(uri)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if uri.startswith("sqlite:///") or scheme in ("http", "https") or uri == "databricks":
        return
    if scheme.startswith("databricks"):
        return
    if scheme in SQL_DRIVERS:
        module, package = SQL_DRIVERS[scheme]
        if importlib.util.find_spec(module) is None:
            raise TrackingUriError(
                f"{field}: {shown} needs the Python package {package} (module {module}), which is "
                f"not installed; `uv add {package}`, or use sqlite:///mlflow.db"
            )
        return
    raise TrackingUriError(
        f"{field}: {shown!r} is not a tracking URI MLflow accepts here; use sqlite:///mlflow.db, "
        "http://127.0.0.1:5000 (an `mlflow server`) or a database URI such as postgresql://..."
    )


def probe_http_server(uri: str, timeout: float = 5.0, field: str = "tracking.uri") -> None:
    """One GET of ``/health`` with a timeout: a clear error in seconds where MLflow's client
    would retry for minutes."""
    import base64

    shown = redact_uri(uri)
    try:
        parts = urllib.parse.urlsplit(uri)
        request = urllib.request.Request(
            parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/") + "/health"
        )
        if parts.username is not None:  # basic auth from the URI, as MLflow's client sends it
            pair = f"{parts.username}:{parts.password or ''}".encode()
            request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
        with urllib.request.urlopen(request, timeout=timeout) as r:
            if r.status == 200:
                return
    except urllib.error.HTTPError as e:
        raise TrackingUriError(
            f"{field}: {shown}/health answered HTTP {e.code}; is it an MLflow server?"
        ) from None
    except (OSError, ValueError) as e:
        why = getattr(e, "reason", None) or e.__class__.__name__
        raise TrackingUriError(
            f"{field}: no MLflow server answers at {shown} within {timeout:g} s ({why}); start "
            "it (`mlflow server --host 127.0.0.1 --port 5000`), fix the URI, or use "
            "sqlite:///mlflow.db"
        ) from None
    raise TrackingUriError(f"{field}: {shown}/health did not answer 200; is it an MLflow server?")
