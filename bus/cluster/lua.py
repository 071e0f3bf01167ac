"""The Lua prelude every cluster script starts with.

A script gets the key prefix (``ClusterKeys.prefix``) as ``ARGV[1]`` and
builds its keys from it, so these helpers and :class:`~bus.cluster.keys.ClusterKeys`
must name keys alike. Epochs travel as decimal strings: a Lua number holds
integers exactly up to 2^53 (an epoch is at most microseconds since 1970,
about 2^51 today), but ``tostring`` would print it in exponent form.
"""

from __future__ import annotations

__all__ = ["PRELUDE", "script"]

PRELUDE = r"""
local P = ARGV[1]
local function lease_key(a) return P .. 'lease:{' .. a .. '}' end
local function node_key(n) return P .. 'node:' .. n end
local function held_key(n) return P .. 'held:' .. n end
local function spec_key(a) return P .. 'spec:{' .. a .. '}' end
local function ckpt_key(a) return P .. 'ckpt:{' .. a .. '}' end
local function issued_key(a) return P .. 'issued:{' .. a .. '}' end
local function seen_key(a) return P .. 'seen:{' .. a .. '}' end
local function backlog_key(a) return P .. 'backlog:{' .. a .. '}' end
local function backlogged_key(n) return P .. 'backlogged:' .. n end
local UNOWNED = P .. 'unowned'
local MEMBERS = P .. 'members'
local ERA = P .. 'era'
local FENCING = P .. 'fencing'

local function estr(e) return string.format('%.0f', e) end

-- "<epoch> <node>" -> epoch (number), node; nil, nil for no lease
local function parse_lease(v)
  if not v then return nil, nil end
  local e, n = string.match(v, '^(%d+) (.+)$')
  return tonumber(e), n
end

-- The next epoch of address a: above the newest issued for it, above the
-- caller's floor (the newest it has seen) and above the server clock in
-- microseconds. Epochs are per address (fencing compares them per address
-- only) and every input lives in a's slot: on a Redis Cluster the claim
-- runs where a lives. The clock floor keeps them growing where the issued
-- key is gone: Redis lost its data, or a promoted replica missed the last
-- claims (its clock still runs past every epoch drawn before).
local function next_epoch(a, floor)
  local ie = parse_lease(redis.call('GET', issued_key(a))) or 0
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return math.max(ie + 1, now, (tonumber(floor) or 0) + 1)
end

-- The newest epoch issued for an address and to whom ("<epoch> <node>"),
-- kept past the lease (fencing asks it); forgotten ISSUED_GRACE_MS after
-- the address is given up for good.
local ISSUED_GRACE_MS = 3600000
local function record_issued(a, e, me)
  local ie = parse_lease(redis.call('GET', issued_key(a)))
  if ie == nil or ie <= e then redis.call('SET', issued_key(a), estr(e) .. ' ' .. me) end
end

local function alive(n) return redis.call('EXISTS', node_key(n)) == 1 end
-- Append the envelopes waiting in a's backlog to out, oldest first, and
-- empty it (its owner delivers them now).
local function take_backlog(a, out)
  local bk = backlog_key(a)
  for _, item in ipairs(redis.call('XRANGE', bk, '-', '+')) do
    local fields = item[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'e' then out[#out + 1] = fields[j + 1] end
    end
  end
  redis.call('DEL', bk)
  return out
end
"""


def script(body: str) -> str:
    """A complete script: the prelude, then ``body``."""
    return PRELUDE + body
