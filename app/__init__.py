"""foundry-gateway: one stable OpenAI-compatible URL in front of Microsoft Foundry Local."""

__version__ = "0.1.0"
