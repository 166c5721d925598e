"""Worker side of oliai-bridge: deliver stored webhooks to OliAI within its limits."""
