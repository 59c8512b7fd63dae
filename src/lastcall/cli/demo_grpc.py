"""The demo as a gRPC service, the lastcall way: what the drill serves on ``--server grpc``.

``lastcall.cli.grpc_runner`` makes the server and calls ``LastCall(server)``.
"""

from __future__ import annotations

import lastcall
from lastcall.cli._demo import close_db, flush_orders, make_grpc_handler

handler = make_grpc_handler()
lastcall.on_shutdown(close_db)
lastcall.on_shutdown(flush_orders)  # registered last, runs first
