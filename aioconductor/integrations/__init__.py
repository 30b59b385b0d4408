"""Integrations with web frameworks and observability tools."""
