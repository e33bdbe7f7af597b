"""Names vulture (`make lint`: vulture app vulture_whitelist.py --min-confidence 60) reports as unused but that are
used by something it cannot see: frameworks calling by decorator or by name, protocols, tests. One group per
reason. It is also valid Python (`.venv/bin/python vulture_whitelist.py` imports every module-level name below), so
a name that went away shows up here too. Instance attributes and nested functions are listed as `_.name`.
"""

from unittest.mock import MagicMock

from app.batches import lines
from app.core import measured, settings
from app.proxy import flights, outcome
from app.server import admin, batches, files, models, probes, stored
from app.server import app as server_app
from app.upstream import transport

_ = MagicMock()  # stands for any object: `_.name` marks an attribute or nested function name as used

# FastAPI routes: registered by their @router decorators, called by FastAPI
admin.cache_listing
admin.cache_flush
batches.create_batch
batches.list_batches
batches.get_batch
batches.cancel_batch
files.list_files
files.get_file
files.file_content
files.delete_file
models.route_dry_run
probes.healthz
probes.readyz
stored.get_response
stored.delete_response
stored.response_input_items

# FastAPI exception handlers: nested in _install_error_handlers, registered by @api.exception_handler
_.gateway_error
_.http_error
_.store_full
_.store_down
_.validation_error
_.unexpected

# the uvicorn factory: named as a string ("app.server.app:create_app") in app/cli/serve.py
server_app.create_app

# uvicorn's RequestResponseCycle reads it (app/server/protocol.py sets it to end a stalled body)
_.disconnected

# pydantic: validators are called by the model, model_config is read by pydantic-settings
settings.UpstreamSettings._upstream_scheme
settings.UpstreamSettings._ca_bundle_exists
settings.Routing._header_name
settings.Settings._split_csv
settings.Settings.model_config

# asyncio.Protocol callbacks (the event loop calls them) and httptools parser callbacks (the parser calls them)
transport._Connection.eof_received
transport._Connection.pause_writing
transport._Connection.resume_writing
transport._Connection.on_header

# the registry's `measured` record parsed whole: each part is type-checked (a wrong type is a registry problem)
measured.Measured.ttft_p50_ms
measured.Measured.tokens_per_s

# used only by tests (tests/unit/proxy/test_flights.py, tests/unit/batches/test_lines.py, tests/unit/proxy/)
flights.Flight.followers
lines.read_lines
outcome.Call.of  # app/proxy/outcome.py, new in the proxy refactor: its tests build calls with it

