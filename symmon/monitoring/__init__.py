"""Monitoring logic between the adapters and the front-ends: schedule, diagnosis, policy, log schema."""
