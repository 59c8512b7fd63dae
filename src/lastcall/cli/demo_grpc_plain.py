"""The gRPC demo with ``atexit``, as a gRPC service is written without lastcall."""

from __future__ import annotations

import atexit

from lastcall.cli._demo import close_db, flush_orders, make_grpc_handler

handler = make_grpc_handler()
atexit.register(close_db)
atexit.register(flush_orders)  # registered last, runs first
