"""Validators: how a session is checked (BaaS HTTP call, JWT)."""
