"""Queue-worker adapters: one module per framework, each reached only from its public face."""
