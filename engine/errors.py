"""Errors raised for bad input: each message names the file, the region and what to do."""


class InputError(ValueError):
    """An input file is missing, unreadable, malformed or inconsistent with the others."""


class ShardError(ValueError):
    """A shard set is incomplete, corrupted or was built from other inputs."""
