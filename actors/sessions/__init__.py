"""The session actors: each meeting, data-channel session, token fetcher,
audio output and call transfer is a sans-I/O core with a shell on the
runtime (:mod:`actors.runtime`). They know each other only by address and
by the messages in ``contracts``; none imports another's implementation.
"""
