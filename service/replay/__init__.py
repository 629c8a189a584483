"""Recorded traffic through the pipeline, as fast as it can be read.

``recording`` reads and writes recordings (one message a line); ``engine`` replays one
through a pipeline on recorded time; ``workers`` replays it on several processes sharded by
site, in lock-step on the recording's clock.

May import: ``service.runtime`` and every room below it.
"""
