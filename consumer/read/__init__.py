"""The read client: ``SmartCRMConsumer`` and what answers it (near-cache, Redis, the Wrapper)."""
