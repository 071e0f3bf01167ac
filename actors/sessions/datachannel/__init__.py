"""The data-channel session actor: one per meeting and session id.

``machine`` is the sans-I/O core (all of the protocol's rules), ``actor`` the
shell that hosts it at ``datachannel:<meeting>/<session>``, ``connector`` the
seam to the network (HTTP register, WebSockets). Other actors talk to it only
through :mod:`actors.sessions.contracts.datachannel`.
"""
