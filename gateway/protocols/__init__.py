"""Protocol adapters: each client protocol (door) and upstream protocol translated to and
from the core request shape the stages, routing and records work on."""
