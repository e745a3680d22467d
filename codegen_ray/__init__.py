"""codegen-ray: a self-hostable code sandbox for LLM agents, on Ray."""

__version__ = "0.1.0"
