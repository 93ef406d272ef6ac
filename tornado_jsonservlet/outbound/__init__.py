"""Outbound work that stops when the request that wanted it is cancelled.

``AsyncHTTPClient.configure("tornado_jsonservlet.outbound.CancellableHTTPClient")``
keeps working: the client class is re-exported here from ``http_client``.
"""

from tornado_jsonservlet.outbound.http_client import CancellableHTTPClient

__all__ = ["CancellableHTTPClient"]
