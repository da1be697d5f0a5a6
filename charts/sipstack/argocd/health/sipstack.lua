-- Argo CD health check for sipstack.io's SipEdge, MediaPool and PgCluster: their
-- statuses share the conditions, so one script serves the three keys in argocd-cm
-- (resource.customizations.health.sipstack.io_<Kind>).
--
-- The operator reports the conditions Ready, Progressing and Degraded and the
-- generation they describe (operator/src/status.rs, controller/report.rs):
--   no status yet                          -> Progressing "Waiting for the operator"
--   observedGeneration < generation        -> Progressing: the status is about an older spec
--   Degraded=True                          -> Degraded, with its message
--   Ready=True                             -> Healthy, with its message
--   anything else                          -> Progressing, with the rollout's message
--
-- Argo CD runs this in Lua 5.1 with only the base and table libraries (no string
-- or math), the object as the global `obj`, every number a float.
local hs = {}

local function condition(conditions, wanted)
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

-- The condition's message, or its reason when it has none.
local function text(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return c.reason
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

-- A spec change the operator has not acted on yet: the conditions describe the
-- previous generation, so neither Healthy nor Degraded would be about this one.
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on the latest spec"
  return hs
end

local degraded = condition(status.conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded)
  return hs
end

local ready = condition(status.conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready)
  return hs
end

-- Applied but not every pod is ready: "1 of 2 pods ready".
hs.status = "Progressing"
local progressing = condition(status.conditions, "Progressing")
if progressing ~= nil and progressing.status == "True" and text(progressing) ~= nil then
  hs.message = text(progressing)
elseif ready ~= nil and text(ready) ~= nil then
  hs.message = text(ready)
else
  hs.message = "Waiting for the operator"
end
return hs
