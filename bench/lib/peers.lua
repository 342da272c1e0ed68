--- The servers the benchmark runs, sluice and its peers, each started on a
--- given port pinned to the server CPUs. Every start function returns a
--- bench.Proc whose :cpu() and :memory() cover the whole server (nginx's
--- master and worker), or nil and why the peer cannot run here.
local proc = require "proc"

local peers = {}

---@class bench.Env
---@field root string       the repository root
---@field bin string        the sluice binary
---@field cpu string        CPUs the servers are pinned to
---@field tmp string        a scratch folder for the run

--- sluice with `app` (a folder under the root), `workers` workers (default
--- 1), sharing its channels through the Redis at `redis` (a redis:// URL)
--- when given.
---@param env bench.Env
---@param port integer
---@param app string
---@param opts? { workers?: integer, env?: table<string,string>, cpu?: string, redis?: string, name?: string }
---@return bench.Proc
function peers.sluice(env, port, app, opts)
  opts = opts or {}
  -- No access log, as the nginx peers run with access_log off.
  local argv = { env.bin, "--host", "127.0.0.1", "--port", tostring(port),
                 "--workers", tostring(opts.workers or 1), "--access-log", "off" }
  if opts.redis then
    argv[#argv + 1] = "--redis"
    argv[#argv + 1] = opts.redis
  end
  argv[#argv + 1] = env.root .. "/" .. app
  return proc.spawn {
    name = opts.name or "sluice", cpu = opts.cpu or env.cpu, port = port, env = opts.env, argv = argv,
  }
end

local REDIS = "/usr/bin/redis-server"

--- redis-server on 127.0.0.1:port for sluice's --redis, holding nothing on
--- disk (no RDB snapshot, no append-only file; its working directory is a
--- folder of its own under the scratch folder). Stop it with SIGTERM.
---@param env bench.Env
---@param port integer
---@return bench.Proc?
---@return string? why
function peers.redis(env, port)
  if not proc.read(REDIS) then return nil, "redis-server is not installed" end
  local dir = ("%s/redis-%d"):format(env.tmp, port)
  os.execute("mkdir -p " .. proc.quote(dir))
  local ok, p = pcall(proc.spawn, {
    name = "redis-server", cpu = env.cpu, port = port, cwd = dir,
    argv = { REDIS, "--bind", "127.0.0.1", "--port", tostring(port), "--dir", dir,
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes" },
  })
  if not ok then return nil, p end
  return p
end

local NGINX = "/usr/sbin/nginx"

-- nginx with bench/peers/NAME.conf, its placeholders filled in, in a prefix
-- folder of its own under the scratch folder (also its working directory:
-- nchan can abort at exit without a master process, and a core file lands
-- there rather than in the repository).
local function nginx(env, port, name, vars)
  if not proc.read(NGINX) then return nil, "nginx is not installed" end
  local template = proc.read(("%s/bench/peers/%s.conf"):format(env.root, name))
  if not template then return nil, "bench/peers/" .. name .. ".conf is missing" end
  local prefix = ("%s/nginx-%s-%d"):format(env.tmp, name, port)
  os.execute("mkdir -p " .. proc.quote(prefix .. "/logs"))
  vars = vars or {}
  vars.PORT = tostring(port)
  local conf = template:gsub("@([%u_]+)@", function(k) return vars[k] end)
  proc.write(prefix .. "/nginx.conf", conf)
  local ok, p = pcall(proc.spawn, {
    name = "nginx " .. name, cpu = env.cpu, port = port, cwd = prefix,
    argv = { NGINX, "-p", prefix, "-c", prefix .. "/nginx.conf", "-e", prefix .. "/logs/error.log" },
  })
  if not ok then return nil, p end
  return p
end

-- A Node script under bench/peers with `args` after it.
local function node(env, port, script, args)
  if not proc.have("node") then return nil, "node is not installed" end
  local argv = { "node", ("%s/bench/peers/%s"):format(env.root, script), tostring(port) }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local ok, p = pcall(proc.spawn, { name = "node " .. script, cpu = env.cpu, port = port, argv = argv })
  if not ok then return nil, p end
  return p
end

--- nginx with the nchan module: GET /sub?ch=X (EventSource), POST /publish?ch=X.
function peers.nchan(env, port) return nginx(env, port, "nchan") end

--- nginx with the Lua module: GET /hello/NAME.
function peers.nginx_lua(env, port) return nginx(env, port, "lua") end

--- nginx proxy_pass (buffering off) to the upstream on `upstream_port`.
function peers.nginx_proxy(env, port, upstream_port)
  return nginx(env, port, "proxy", { UPSTREAM_PORT = tostring(upstream_port) })
end

--- The tutorial-style Node SSE server: /sub, /publish, /hello/NAME.
function peers.node_sse(env, port) return node(env, port, "node-sse.mjs") end

--- The Node fetch-and-pipe proxy to `upstream_url`.
function peers.node_proxy(env, port, upstream_url) return node(env, port, "node-proxy.mjs", { upstream_url }) end

return peers
