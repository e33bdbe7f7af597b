"""What sits behind the gateway: the HTTP client and its transport, the runtime's inventory and model loads, the
managed Foundry Local process, the catalogs, and the nodes of a fleet.
"""
