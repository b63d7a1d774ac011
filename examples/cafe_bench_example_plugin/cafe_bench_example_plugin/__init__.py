"""Example plugin for cafe_bench: one attributor registered through an entry point."""
