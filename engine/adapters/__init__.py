"""Broker front-ends: each turns its wire calls into Events and the engine's Decisions into replies."""
