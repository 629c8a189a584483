"""What a person runs: ``fleetwatch`` and its subcommands.

``cli`` parses the command line; ``demo`` runs a broker, a simulated fleet and the daemon
together; ``simulate`` publishes (or records) a simulated fleet; ``console`` prints alerts
live. A new subcommand goes in ``cli``, its work in a module of its own here.

May import every other room.
"""
