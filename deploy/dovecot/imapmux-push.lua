-- imapmux-push.lua: a Dovecot 2.3 push_notification Lua driver that tells
-- imapmux which mailboxes changed, so that sessions parked on them wake up.
--
-- For every message added (MessageNew: delivery; MessageAppend: APPEND,
-- COPY, MOVE), expunged (MessageExpunge) and every flag or keyword change
-- (FlagsSet, FlagsClear) it publishes, at the end of the mail transaction,
--
--     PUBLISH <prefix>events "mbox USER MAILBOX"
--
-- once per (user, mailbox) of that transaction, however many messages it
-- touched. USER is Dovecot's user name, MAILBOX the mailbox name as Dovecot
-- gives it (its vname: the namespace's hierarchy separator, and UTF-8, not
-- the modified UTF-7 of the IMAP wire), unquoted: imapmux splits the
-- message at the first space after USER, so MAILBOX may hold spaces but
-- USER may not (such events are skipped and logged).
--
--   transaction events --> ctx.order (each mailbox once, first seen first)
--   end_txn(success)   --> [AUTH, on a new connection] --> Redis
--                      --> one pipelined write: PUBLISH... --> Redis
--                      <-- one reply line per command
--
-- Settings (plugin { } section, per user through userdb extra fields too):
--   imapmux_redis          = HOST:PORT, [IPv6]:PORT or unix:/path
--                            (default 127.0.0.1:6379). Give an address:
--                            a host name is resolved without a timeout.
--   imapmux_prefix         = key prefix (default imapmux:)
--   imapmux_redis_username = Redis ACL user (optional; needs the password)
--   imapmux_redis_password = AUTH password (optional; never logged)
--
-- Invariants: mail delivery never waits on Redis for more than TIMEOUT
-- seconds per transaction (imapmux_redis being an address), and no error
-- here fails a mail transaction: an event that cannot be published is
-- dropped with a warning in Dovecot's log. One Redis connection is kept per
-- process, and reopened after any error or a change of address or
-- credentials. Needs lua-socket (Debian: lua-socket) built for Dovecot's
-- Lua (5.4 on Debian 12).

local socket = require("socket")
local socket_unix = nil -- socket.unix, loaded the first time unix: is used

-- Seconds one transaction's publishing may take in all (connect included).
local TIMEOUT = 0.5
local DEFAULT_REDIS = "127.0.0.1:6379"
local DEFAULT_PREFIX = "imapmux:"
local LOG = "imapmux-push: "

-- The kept connection: conn is a connected lua-socket object or nil;
-- conn_key names the address and credentials it was opened (and
-- authenticated) with.
local conn = nil
local conn_key = nil

local function close_conn()
	if conn ~= nil then
		conn:close()
	end
	conn = nil
	conn_key = nil
end

-- Replaces every occurrence of secret in text (plain, not a pattern).
local function scrub(text, secret)
	text = tostring(text)
	if secret == nil or secret == "" then
		return text
	end
	local out, pos = {}, 1
	while true do
		local s, e = string.find(text, secret, pos, true)
		if s == nil then
			break
		end
		out[#out + 1] = string.sub(text, pos, s - 1) .. "***"
		pos = e + 1
	end
	out[#out + 1] = string.sub(text, pos)
	return table.concat(out)
end

-- One RESP array of bulk strings.
local function resp(...)
	local args = { ... }
	local parts = { "*" .. #args .. "\r\n" }
	for _, a in ipairs(args) do
		parts[#parts + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
	end
	return table.concat(parts)
end

-- Parses imapmux_redis. Returns {unix = path} or {host = h, port = n}, or
-- nil and a reason.
local function parse_address(addr)
	if string.sub(addr, 1, 5) == "unix:" then
		local path = string.sub(addr, 6)
		if path == "" then
			return nil, "empty unix socket path"
		end
		return { unix = path }
	end
	local host, port = string.match(addr, "^%[([^%]]+)%]:(%d+)$")
	if host == nil then
		host, port = string.match(addr, "^([^:]+):(%d+)$")
	end
	port = tonumber(port)
	if host == nil or port == nil or port < 1 or port > 65535 then
		return nil, "not HOST:PORT, [IPV6]:PORT or unix:/path"
	end
	return { host = host, port = port }
end

-- Seconds left before deadline (never negative).
local function left(deadline)
	local t = deadline - socket.gettime()
	return t > 0 and t or 0
end

-- Opens a connection to target (what parse_address returned) before
-- deadline. Returns the socket, or nil and a reason.
local function open(target, deadline)
	local s, err
	if target.unix ~= nil then
		if socket_unix == nil then
			local ok, mod = pcall(require, "socket.unix")
			if not ok then
				return nil, "socket.unix not available: " .. tostring(mod)
			end
			socket_unix = mod
		end
		s, err = socket_unix.stream()
		if s == nil then
			return nil, err
		end
		s:settimeout(left(deadline))
		local ok, cerr = s:connect(target.unix)
		if ok == nil then
			s:close()
			return nil, cerr
		end
		return s
	end
	s, err = socket.tcp()
	if s == nil then
		return nil, err
	end
	s:settimeout(left(deadline))
	local ok, cerr = s:connect(target.host, target.port)
	if ok == nil then
		s:close()
		return nil, cerr
	end
	s:setoption("tcp-nodelay", true)
	return s
end

-- Sends the commands in one write and reads one reply line per command,
-- all before deadline. Returns true, or nil and a reason (Redis's own
-- error text when it answered one: a failed AUTH ends the exchange).
local function exchange(s, cmds, deadline)
	s:settimeout(left(deadline))
	local ok, err = s:send(table.concat(cmds))
	if ok == nil then
		return nil, err
	end
	for _ = 1, #cmds do
		s:settimeout(left(deadline))
		local line, rerr = s:receive("*l")
		if line == nil then
			return nil, rerr
		end
		local t = string.sub(line, 1, 1)
		if t == "-" then
			return nil, "redis: " .. string.sub(line, 2)
		end
		if t ~= ":" and t ~= "+" then
			return nil, "unexpected reply"
		end
	end
	return true
end

-- Opens a connection to target and, when st has a password, authenticates
-- it, all before deadline. AUTH is answered before anything else is sent:
-- pipelined after a failed AUTH, a PUBLISH would still run as Redis's
-- default user. Returns the socket, or nil and a reason.
local function connect(target, st, deadline)
	local s, err = open(target, deadline)
	if s == nil or st.password == nil then
		return s, err
	end
	local auth
	if st.username ~= nil then
		auth = resp("AUTH", st.username, st.password)
	else
		auth = resp("AUTH", st.password)
	end
	local ok, aerr = exchange(s, { auth }, deadline)
	if not ok then
		s:close()
		return nil, aerr
	end
	return s
end

-- Publishes messages (a list of payloads) on channel with settings st.
-- Uses the kept connection when it was made for the same address and
-- credentials; a kept connection that fails is replaced once, while time
-- is left (it may have died while idle; a PUBLISH may then be repeated:
-- harmless, events only wake sessions). Returns true, or nil and a reason.
local function publish_all(st, channel, messages)
	local target, perr = parse_address(st.redis)
	if target == nil then
		return nil, "imapmux_redis: " .. perr
	end
	local key = st.redis .. "\0" .. (st.username or "") .. "\0" .. (st.password or "")
	local deadline = socket.gettime() + TIMEOUT
	local cmds = {}
	for _, m in ipairs(messages) do
		cmds[#cmds + 1] = resp("PUBLISH", channel, m)
	end
	if conn ~= nil and conn_key ~= key then
		close_conn()
	end
	local tries = conn ~= nil and 2 or 1
	for try = 1, tries do
		if conn == nil then
			local s, err = connect(target, st, deadline)
			if s == nil then
				return nil, err
			end
			conn, conn_key = s, key
		end
		local ok, err = exchange(conn, cmds, deadline)
		if ok then
			return true
		end
		close_conn()
		if try == tries or left(deadline) == 0 then
			return nil, err
		end
	end
end

-- Settings of user, read once per transaction.
local function settings(user)
	local function env(name)
		local v = user:plugin_getenv(name)
		if v == nil or v == "" then
			return nil
		end
		return v
	end
	return {
		redis = env("imapmux_redis") or DEFAULT_REDIS,
		prefix = env("imapmux_prefix") or DEFAULT_PREFIX,
		username = env("imapmux_redis_username"),
		password = env("imapmux_redis_password"),
	}
end

-- Transaction context: the user, and the mailboxes changed so far as a
-- set (seen) and in first-seen order (order).
function dovecot_lua_notify_begin_txn(user)
	return { user = user, seen = {}, order = {} }
end

local function changed(ctx, event)
	local mbox = event.mailbox
	if mbox == nil or ctx.seen[mbox] then
		return
	end
	ctx.seen[mbox] = true
	ctx.order[#ctx.order + 1] = mbox
end

-- Defining a handler is what subscribes the driver to an event.
function dovecot_lua_notify_event_message_new(ctx, event)
	changed(ctx, event)
end

function dovecot_lua_notify_event_message_append(ctx, event)
	changed(ctx, event)
end

function dovecot_lua_notify_event_message_expunge(ctx, event)
	changed(ctx, event)
end

-- Dovecot 2.3 calls the FlagsClear handler on every flag or keyword
-- change, not only on clears, so the two overlap; changed() makes that one
-- event.
function dovecot_lua_notify_event_flags_set(ctx, event)
	changed(ctx, event)
end

function dovecot_lua_notify_event_flags_clear(ctx, event)
	changed(ctx, event)
end

function dovecot_lua_notify_end_txn(ctx, success)
	if not success or #ctx.order == 0 then
		return
	end
	local user = ctx.user.username
	if user == nil or user == "" or string.find(user, "[ \r\n]") then
		dovecot.i_warning(LOG .. "user name '" .. tostring(user) ..
			"' holds a space or line break: " .. #ctx.order ..
			" mbox event(s) not published")
		return
	end
	local ok, st = pcall(settings, ctx.user)
	if not ok then
		dovecot.i_error(LOG .. "reading settings failed: " .. tostring(st))
		return
	end
	local messages = {}
	for _, mbox in ipairs(ctx.order) do
		messages[#messages + 1] = "mbox " .. user .. " " .. mbox
	end
	local channel = st.prefix .. "events"
	local pok, done, err = pcall(publish_all, st, channel, messages)
	if not pok then
		-- A bug or a lua-socket surprise: drop the connection, keep mail.
		pcall(close_conn)
		err = done
		done = nil
	end
	if not done then
		-- Scrub the whole line: an operator may have put the password
		-- into imapmux_redis by mistake.
		dovecot.i_warning(scrub(LOG .. "redis " .. st.redis .. ": " ..
			tostring(err) .. "; " .. #messages .. " mbox event(s) for " ..
			user .. " not published on " .. channel, st.password))
	end
end

function script_deinit()
	close_conn()
end
