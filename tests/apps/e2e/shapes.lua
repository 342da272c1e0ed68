-- Every shape of frame the SSE encoder produces, in the order GET /shapes
-- sends them (tests/apps/e2e/app.lua); tests/spec/e2e_clients_spec.lua reads
-- the same list to know what a parser must make of the bytes.
--
-- { send = ev } is stream:send(ev); { comment = text } is stream:comment(text).
-- Data stays valid UTF-8 (a parser decodes text), but holds every line
-- break the encoder splits on, alone and mixed, at the start, the end and
-- side by side, empty lines, leading spaces, colons and a NUL.
local BIG = {}
for i = 1, 2000 do BIG[i] = ("line %04d ü 🌊"):format(i) end

return {
  { send = "plain" },
  { send = { data = "one\ntwo\nthree" } },                  -- LF
  { send = { data = "carriage\rreturn" } },                  -- CR
  { send = { data = "windows\r\nline\r\nends" } },           -- CRLF
  { send = { data = "mixed\r\n\nlf\r\rcr\n\rend" } },        -- CRLF LF CR CR LF CR side by side
  { send = { data = "\nleading break" } },
  { send = { data = "trailing break\n" } },
  { send = { data = "trailing crlf\r\n" } },
  { send = { data = "\r" } },                                -- two empty lines
  { send = { data = "" } },                                  -- one empty data line
  { send = { data = "\n\n" } },
  { send = { data = " one leading space" } },                -- "data:  one ...": one space is the separator
  { send = { data = "  two leading spaces\n\tand a tab" } },
  { send = { data = "data: not a field\nid: nor this\n: nor a comment\nretry: 1" } },
  { send = { data = "colons: a:b::c:" } },
  { send = { data = "nul \0 inside" } },
  { send = { data = "Grüße, 你好, мир, שלום, 🌍🚀 — déjà vu\u{200B}zero-width" } },
  { send = { event = "named", data = "with an event name" } },
  { send = { event = "ünïcode-evént 🚀", data = "unicode event name" } },
  { send = { id = "42", data = "with an id" } },
  { send = { id = "id-ü-🌍", event = "both", data = "unicode id\nand two lines" } },
  { send = { id = "", data = "an empty id resets it" } },
  { send = { event = "with retry", id = "43", retry = 1500, data = "every field" } },
  { send = { retry = 2500 } },                                -- retry alone: no event
  { send = { id = "44" } },                                   -- id alone: no event
  { send = { event = "alone" } },                             -- event alone: no event
  { send = { data = { text = "table data is JSON", n = 3, list = { 1, 2 }, nested = { ok = true } } } },
  { send = { event = "big", data = table.concat(BIG, "\n") } },
  { comment = "a comment" },
  { comment = "" },                                           -- a bare ":" (a heartbeat)
  { comment = "a comment\nover two lines" },
  { comment = " leading space, ü 🌍" },
  { send = "after the comments" },
  { send = { event = "message", data = "explicit message type" } },
  { send = "last" },
}
