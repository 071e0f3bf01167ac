"""The ``token:<meeting>`` actor: holds a meeting's data-channel tokens.

``machine`` is the sans-I/O core, ``actor`` the shell, ``http`` the seam to
the token endpoint (and its aiohttp client). Other actors speak to it only
through :mod:`actors.sessions.contracts.token`.
"""
