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
local function handled_key(a) return P .. 'handled:{' .. a .. '}' end
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

-- Claims wait until the data set is a lease TTL old. A younger one may
-- have replaced one whose leases their holders still trust (Redis lost its
-- data, was flushed, restarted from a snapshot without the last claims, or
-- a replica that missed them was promoted): within a TTL each such holder
-- writes its lease and state back (restore_lease) or stops trusting it.
-- A claim granted meanwhile would start the actor again from older state
-- (or none) and the restore would then find it taken: what the holder
-- acknowledged since would be gone. `born` keeps "<server us> <run_id>":
-- another run's (a restart from its data, a promoted replica) starts the
-- wait again from now; where there is none (Redis lost it, or, on a Redis
-- Cluster, nobody claimed in that slot yet) the data set is as old as the
-- server's run, unless the server took its data over from a primary (a
-- promoted replica: its secondary replication id is set), which may have
-- died before the key, or the first claims beside it, reached the
-- replica: then it waits from now too. Returns the ms still to wait (0: none).
local BORN = 'huddle:born'
local function server_info()
  local info = redis.call('INFO', 'server')
  return string.match(info, 'run_id:(%w+)') or '', tonumber(string.match(info, 'uptime_in_seconds:(%d+)') or '0')
end
local function server_run() return (server_info()) end
-- Whether this server's data set came from a primary it replaced.
local function promoted()
  local id2 = string.match(redis.call('INFO', 'replication'), 'master_replid2:(%x+)')
  return id2 ~= nil and string.find(id2, '[^0]') ~= nil
end
-- The birth under `born`: server us and run_id (nil, nil: none).
local function read_born(born)
  return string.match(redis.call('GET', born) or '', '^(%d+) (%w*)$')
end
-- Whether the data set under `born` began with this run of the server and
-- has not lost the key since: a lease claimed there is still there unless
-- it lapsed or was taken (else the data set is new since: Redis lost it).
local function same_data_set(born)
  local _, r = read_born(born)
  return r ~= nil and r == server_run()
end
local function unsettled_ms(born, ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local run, up = server_info()
  local b, r = read_born(born)
  if not b or r ~= run then
    if b or promoted() then b = now else b = now - up * 1000000 end
    redis.call('SET', born, estr(b) .. ' ' .. run)
  end
  local wait = tonumber(ttl) - math.floor((now - tonumber(b)) / 1000)
  if wait > 0 then return wait end
  return 0
end

-- The msg ids a's actor handled last, oldest first: a list, written a few
-- at a time (write_handled); or, as a former version wrote them, one
-- msgpack string under seen_key (the caller decodes it); '' for none.
local function read_handled(a)
  local ids = redis.call('LRANGE', handled_key(a), 0, -1)
  if #ids > 0 then return ids end
  return redis.call('GET', seen_key(a)) or ''
end

-- Write ARGV[from..from+n-1] (msg ids, oldest first) to a's handled list:
-- mode 'r' replaces the list (the whole window), 'a' appends what follows
-- `after` (the id the writer last sent; '' for none). An append is
-- idempotent: sent again (a reply lost), it goes on after the id the list
-- ends with. When the list does not end where the writer believes (lost,
-- expired, or Redis went back to older data) it answers false, and the
-- writer sends the whole window next; the ids of this write are appended
-- all the same (those the list does not hold), because the state written
-- beside them includes their messages: until the window comes, the next
-- owner must still drop copies of them. Only a list a former version kept
-- under seen_key is left alone (the window replaces it). Kept to the
-- newest `keep`, for ttl.
local function append_missing(k, from, n)
  local held = {}
  for _, id in ipairs(redis.call('LRANGE', k, 0, -1)) do held[id] = true end
  for j = from, from + n - 1 do
    if not held[ARGV[j]] then
      held[ARGV[j]] = true
      redis.call('RPUSH', k, ARGV[j])
    end
  end
end
local function write_handled(a, mode, after, from, n, ttl, keep)
  local k = handled_key(a)
  local follows = true
  if mode == 'a' then
    local tail = redis.call('LINDEX', k, -1)
    if not tail then
      if after ~= '' then
        if redis.call('EXISTS', seen_key(a)) == 1 then return false end
        follows = false
      end
    elseif tail ~= after then
      local at = nil
      for j = from, from + n - 1 do
        if ARGV[j] == tail then at = j end
      end
      if at then
        n = n - (at - from + 1)
        from = at + 1
      else
        follows = false
      end
    end
  else
    redis.call('DEL', k, seen_key(a))
  end
  if not follows then
    append_missing(k, from, n)
  elseif n > 0 then
    redis.call('RPUSH', k, unpack(ARGV, from, from + n - 1))
  end
  redis.call('LTRIM', k, -tonumber(keep), -1)
  redis.call('PEXPIRE', k, ttl)
  return follows
end
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

-- The per-address steps of the lease scripts. Each touches a's keys only
-- (its slot, on a Redis Cluster): the one-server scripts add the node
-- bookkeeping around them in the same step, the sharded store after them.

-- Take a's lease for me under a new epoch (the caller decided it may) and
-- return what it brings: {1, me, epoch, checkpoint, spec, seen, backlog...},
-- read under the new lease (no former owner can write them any more).
local function take_lease(a, me, ttl, floor, spec)
  local e = next_epoch(a, floor)
  redis.call('SET', lease_key(a), estr(e) .. ' ' .. me, 'PX', ttl)
  record_issued(a, e, me)
  if spec ~= '' then redis.call('SET', spec_key(a), spec) end
  local out = {1, me, estr(e), redis.call('GET', ckpt_key(a)) or '', redis.call('GET', spec_key(a)) or '',
               read_handled(a)}
  return take_backlog(a, out)
end

-- Give a's lease up if it is (me, e) or gone; false if someone else holds it.
-- mode 'unowned' writes spec and checkpoint back if Redis lost them, the
-- checkpoint with the msg ids its state includes (ARGV[from..from+n-1]:
-- without them the next owner would apply a copy of one again);
-- 'retire' deletes them.
local function drop_lease(a, me, e, mode, spec, ckpt, from, n, seen_ttl, keep)
  local v = redis.call('GET', lease_key(a))
  if v and v ~= e .. ' ' .. me then return false end
  if v then redis.call('DEL', lease_key(a)) end
  if mode == 'unowned' then
    if spec ~= '' then redis.call('SET', spec_key(a), spec, 'NX') end
    if ckpt ~= '' and redis.call('SET', ckpt_key(a), ckpt, 'NX') and n > 0 then
      write_handled(a, 'r', '', from, n, seen_ttl, keep)
    end
  elseif mode == 'retire' then
    redis.call('DEL', spec_key(a), ckpt_key(a))
  end
  if mode ~= 'unowned' then redis.call('PEXPIRE', issued_key(a), ISSUED_GRACE_MS) end
  return true
end

-- Write (me, e)'s lease of a back after Redis lost it: 'restored', or
-- 'ours' (it is still there), or 'taken' (someone claimed a meanwhile).
-- The msg ids are ARGV[from..from+n-1] (n may be 0).
local function restore_lease(a, me, e, ttl, spec, ckpt, seen_ttl, keep, from, n)
  local v = redis.call('GET', lease_key(a))
  if v then
    if v == e .. ' ' .. me then return 'ours' end
    return 'taken'
  end
  -- A newer epoch was issued since (and let go): not ours to bring back.
  local ie = parse_lease(redis.call('GET', issued_key(a)))
  if ie ~= nil and ie > tonumber(e) then return 'taken' end
  redis.call('SET', lease_key(a), e .. ' ' .. me, 'PX', ttl)
  record_issued(a, tonumber(e), me)
  if spec ~= '' then redis.call('SET', spec_key(a), spec, 'NX') end
  -- The holder's state is the newest there is (its lease was valid until
  -- now): it replaces what a former owner's release may have written back.
  if ckpt ~= '' then redis.call('SET', ckpt_key(a), ckpt) end
  -- the msg ids its state includes, or the next owner applies a copy again
  if n > 0 then write_handled(a, 'r', '', from, n, seen_ttl, keep) end
  return 'restored'
end

-- One checkpoint write under the lease compare: 1 accepted, 0 refused (the
-- lease is another's, or another epoch's), -1 refused: nobody holds it.
-- has ~= '0': write data (and log it to the stream log_key if given);
-- seen ~= '': the msg ids handled (ARGV[from..from+n-1], write_handled's
-- mode and after), in the same step as the state they led to; 2 (accepted)
-- when their append did not follow on what the list holds.
local function save_write(a, me, e, has, data, log_key, maxlen, note, seen, after, from, n, seen_ttl, keep)
  local v = redis.call('GET', lease_key(a))
  if not v then return -1 end
  if v ~= e .. ' ' .. me then return 0 end
  if has ~= '0' then
    redis.call('SET', ckpt_key(a), data)
    if log_key then
      redis.call('XADD', log_key, 'MAXLEN', '~', maxlen, '*', 'a', a, 'e', e, 'n', me, 'note', note)
    end
  end
  if seen ~= '' and not write_handled(a, seen, after, from, n, seen_ttl, keep) then return 2 end
  return 1
end
"""


def script(body: str) -> str:
    """A complete script: the prelude, then ``body``."""
    return PRELUDE + body
