"""The process around a service: its lifecycle, part jobs, health and metrics."""
