"""The ``pusher`` command: one entry point over the API, the tracker, the connectors,
the status store's migrations, the client commands and (from a checkout) the dev stack.

It sits above both the API package and ``connectors`` and is the only production code
that imports both; each subcommand imports what it runs only when it runs.
"""
