-- Voicemail of MediaPool "{{ pool_name }}", rendered by sipstack. Do not edit.
--
--   sipstack_voicemail.lua deposit   records a message for the mailbox the edge
--                                    names in X-Sipstack-Mailbox
--   sipstack_voicemail.lua inbox     plays the messages of the subscriber the
--                                    edge authenticated (X-Sipstack-Subscriber)
--
-- Messages, audio included, are rows of sipstack_voicemail in the platform
-- database: the node keeps nothing, so a message left through one node is heard
-- through any other. Only the edges can send this node SIP, and they remove every
-- X-Sipstack-* header a caller sends, so the two headers are the edge's word.
-- freeswitch.Dbh has no bound parameters: every value put into SQL is first
-- checked against a pattern that admits no quote, or reduced to such characters.

local DSN = "pgsql://host={{ db.host }} port={{ db.port }} dbname={{ db.database }} user={{ db.user }} connect_timeout=5 application_name=sipstack-voicemail"
local MAX_SECONDS = {{ voicemail_max_seconds }}
-- a recording ends after this many seconds below the energy threshold
local SILENCE_THRESHOLD = 200
local SILENCE_SECONDS = 5
-- recordings shorter than this are a hang-up at the tone, not a message
local MIN_MS = 500
local VOICE = "slt"

local function log(level, text)
  freeswitch.consoleLog(level, "sipstack voicemail: " .. text .. "\n")
end

local function say(text)
  if session:ready() then
    session:set_tts_params("flite", VOICE)
    session:speak(text)
  end
end

local function beep()
  if session:ready() then
    session:streamFile("tone_stream://%(400,0,1000)")
  end
end

-- user@domain as the subscriber table spells it, or nil
local function mailbox_of(value)
  if value == nil or #value > 130 then return nil end
  local user, domain = string.match(value, "^([%w%._~%+%-]+)@([%w%.%-]+)$")
  if user == nil or #user > 64 or #domain > 64 then return nil end
  return user, string.lower(domain)
end

-- a value reduced to characters that cannot end an SQL string
local function plain(value, max)
  value = string.gsub(value or "", "[^%w%._~%+%-@:*#]", "")
  return string.sub(value, 1, max)
end

local function connect()
  local dbh = freeswitch.Dbh(DSN)
  if not dbh:connected() then
    log("ERR", "the database cannot be reached")
    return nil
  end
  return dbh
end

local function read_file(path)
  local f = io.open(path, "rb")
  if f == nil then return nil end
  local data = f:read("*a")
  f:close()
  return data
end

local function write_file(path, data)
  local f = io.open(path, "wb")
  if f == nil then return false end
  f:write(data)
  f:close()
  return true
end

local function to_hex(data)
  return (string.gsub(data, ".", function(c) return string.format("%02x", string.byte(c)) end))
end

local function from_hex(hex)
  return (string.gsub(hex, "%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

local function temp_path(name)
  return freeswitch.getGlobalVariable("temp_dir") .. "/sipstack-vm-" .. session:get_uuid() .. "-" .. name .. ".wav"
end

local function subscriber_exists(dbh, user, domain)
  local found = false
  dbh:query("SELECT 1 AS found FROM subscriber WHERE username = '" .. user .. "' AND domain = '" .. domain .. "'",
    function(row) found = true end)
  return found
end

local function deposit()
  local user, domain = mailbox_of(session:getVariable("sip_h_X-Sipstack-Mailbox"))
  session:answer()
  session:sleep(300)
  local dbh = user and connect()
  if user == nil or dbh == nil or not subscriber_exists(dbh, user, domain) then
    log("WARNING", "no mailbox for " .. plain(session:getVariable("sip_h_X-Sipstack-Mailbox"), 130))
    say("This mailbox is not available.")
    session:hangup("UNALLOCATED_NUMBER")
    return
  end
  say("The person you called is not available. Please leave a message after the tone.")
  beep()
  if not session:ready() then return end
  local path = temp_path("deposit")
  session:recordFile(path, MAX_SECONDS, SILENCE_THRESHOLD, SILENCE_SECONDS)
  -- the caller may have hung up: the recording is kept all the same
  local ms = tonumber(session:getVariable("record_ms") or "0") or 0
  local audio = read_file(path)
  os.remove(path)
  if audio == nil or ms < MIN_MS then
    log("INFO", "nothing recorded for " .. user .. "@" .. domain)
    return
  end
  local caller = plain(session:getVariable("caller_id_number"), 128)
  local call_id = plain(session:getVariable("sip_call_id"), 255)
  local node = plain(freeswitch.getGlobalVariable("sipstack_bind_ip"), 64)
  local ok = dbh:query("INSERT INTO sipstack_voicemail (username, domain, caller, sip_call_id, media_node, duration_ms, audio) VALUES ('"
    .. user .. "', '" .. domain .. "', '" .. caller .. "', '" .. call_id .. "', '" .. node .. "', "
    .. math.floor(ms) .. ", decode('" .. to_hex(audio) .. "', 'hex'))")
  if ok then
    log("INFO", "message of " .. ms .. " ms from " .. caller .. " for " .. user .. "@" .. domain)
  else
    log("ERR", "the message for " .. user .. "@" .. domain .. " could not be stored: " .. tostring(dbh:last_error()))
  end
  dbh:release()
  if session:ready() then
    say("Thank you. Goodbye.")
    session:hangup("NORMAL_CLEARING")
  end
end

local function count_words(n, what)
  if n == 1 then return "one " .. what end
  return tostring(n) .. " " .. what .. "s"
end

local function inbox()
  local user, domain = mailbox_of(session:getVariable("sip_h_X-Sipstack-Subscriber"))
  session:answer()
  session:sleep(300)
  local dbh = user and connect()
  if user == nil or dbh == nil then
    say("Voicemail is available to subscribers only.")
    session:hangup("CALL_REJECTED")
    return
  end
  local messages = {}
  local new = 0
  dbh:query("SELECT id, (heard_at IS NULL) AS new FROM sipstack_voicemail WHERE username = '" .. user
    .. "' AND domain = '" .. domain .. "' ORDER BY (heard_at IS NULL) DESC, created_at, id",
    function(row)
      table.insert(messages, row)
      if row.new == "t" then new = new + 1 end
    end)
  if #messages == 0 then
    say("You have no messages.")
  else
    say("You have " .. count_words(new, "new message") .. " and " .. count_words(#messages - new, "saved message") .. ".")
  end
  for i, m in ipairs(messages) do
    if not session:ready() then break end
    local id = tonumber(m.id)
    local audio = nil
    dbh:query("SELECT encode(audio, 'hex') AS audio FROM sipstack_voicemail WHERE id = " .. id,
      function(row) audio = row.audio end)
    if audio ~= nil then
      say("Message " .. i .. ".")
      local path = temp_path(tostring(id))
      if write_file(path, from_hex(audio)) then
        session:streamFile(path)
        os.remove(path)
      end
      dbh:query("UPDATE sipstack_voicemail SET heard_at = now() WHERE id = " .. id .. " AND heard_at IS NULL")
      say("Press 7 to delete it.")
      local key = session:getDigits(1, "", 3000)
      if key == "7" then
        dbh:query("DELETE FROM sipstack_voicemail WHERE id = " .. id)
        say("Deleted.")
      end
    end
  end
  dbh:release()
  say("Goodbye.")
  session:hangup("NORMAL_CLEARING")
end

if argv[1] == "deposit" then
  deposit()
elseif argv[1] == "inbox" then
  inbox()
else
  log("ERR", "unknown mode " .. plain(argv[1], 20))
end
