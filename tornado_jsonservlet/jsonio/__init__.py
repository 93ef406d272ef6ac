"""JSON in and out: the codec, responses, request bodies and the low-priority lane.

``codec`` encodes and decodes strictly and fast (ujson, or orjson when installed);
``responses`` holds ``write_json``, ``bodies`` holds ``json_body``; ``lane`` keeps big encodes
off the hot path; ``lean`` does less per request than Tornado's defaults. The
codec's names are re-exported here (``from tornado_jsonservlet.jsonio import
encode`` keeps working as before the family existed).
"""

from tornado_jsonservlet.jsonio.codec import *  # noqa: F403
from tornado_jsonservlet.jsonio.codec import __all__  # noqa: F401
