"""Adapters that make each server stop the lastcall way; imported only when used."""
