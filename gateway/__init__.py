"""The gateway: gRPC (and MCP) fronts plus the Ray driver that routes calls to sessions."""
