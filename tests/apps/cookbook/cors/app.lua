--- An event stream that pages on other origins open with
--- `new EventSource(url, { withCredentials: true })`: the browser sends
--- this site's cookies with it, and lets the page read the stream only
--- because the answer names the page's origin and allows credentials.
---
---     GET  /events  -> the "news" channel; `event: hello` first, naming
---                      the visitor of the `visitor` cookie
---     POST /news    -> publishes the body on "news" -> 202 {"id"}
local sluice = require "sluice"

local app = sluice.app {
  heartbeat = 15,
  -- Name each origin: with credentials, "*" would let every site on the
  -- web read the stream with its visitors' cookies.
  cors = { origins = { "https://app.example.com", "https://admin.example.com" }, credentials = true },
}

app:get("/events", function(req)
  local stream = req:sse()
  stream:send { event = "hello", data = { visitor = req.cookies.visitor or sluice.json.null } }
  stream:subscribe("news", { since = req.last_event_id })
end)

-- Not a simple request (a JSON body): the browser asks first with a
-- preflight OPTIONS, which the cors option answers. (Check who may
-- publish, as in the sign-in recipe.)
app:post("/news", function(req)
  local id, err = sluice.publish("news", { event = "news", data = req:json() })
  if not id then sluice.abort(503, err) end
  return { status = 202, json = { id = id } }
end)

return app
