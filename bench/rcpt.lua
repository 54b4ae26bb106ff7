-- wrk script: POST one Stalwart hook request, read from the file named after `--`.
local body

function init(args)
  local file = assert(io.open(args[1], "rb"))
  body = file:read("*a")
  file:close()
end

function request()
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
