"""Server adapters: everything lastcall knows about one server, one module each (private)."""
