-- busted helper: makes `require "sluice.testing"` (and tests/lib modules)
-- resolve from the repository, whatever the current directory.
local root = os.getenv("SLUICE_ROOT") or "."
package.path = table.concat({
  root .. "/lua/?.lua",
  root .. "/lua/?/init.lua",
  root .. "/tests/lib/?.lua",
  package.path,
}, ";")
