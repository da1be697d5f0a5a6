#!/usr/bin/env bash
# End-to-end tests that only a real cluster can run, on kind (Kubernetes in Docker):
#
#   1. build the operator image (operator/Dockerfile) and load it into a kind cluster;
#   2. helm install charts/sipstack and wait for the operator;
#   3. kubectl apply examples/platform.yaml; wait until PgCluster, MediaPool and
#      SipEdge are Ready;
#   4. scale the MediaPool up and down and wait for its dispatcher rows in PostgreSQL
#      to follow (pods + static members);
#   5. grow the PgCluster to 3 members, delete the primary's pod and wait for
#      another member to be primary (status.primary, Patroni's leader Endpoints);
#   6. run the operator with 2 replicas, delete the leader and wait for the other
#      replica to take the Lease over.
#
# Needs docker (a running engine), kind, kubectl, helm, base64 and network access for
# the nodes to pull the images (Spilo, FreeSWITCH, Kamailio, busybox). See README.md.
#
# Environment: CLUSTER (default sipstack-e2e), KEEP_CLUSTER=1 (leave the cluster),
# REUSE_CLUSTER=1 (use an existing cluster of that name), SKIP_BUILD=1 (image exists),
# IMAGE (default sipstack-operator:e2e), NAMESPACE (default voice), TIMEOUT (per wait,
# default 900 s), HELM (default: helm on PATH, else the one validate-manifests.sh fetched).
set -euo pipefail
cd "$(dirname "$0")/../.."

cluster=${CLUSTER:-sipstack-e2e}
image=${IMAGE:-sipstack-operator:e2e}
ns=${NAMESPACE:-voice}
system_ns=sipstack-system
release=sipstack
timeout=${TIMEOUT:-900}
helm=${HELM:-$(command -v helm || echo "${XDG_CACHE_HOME:-$HOME/.cache}/sipstack/tools/helm-v3.17.1/helm")}
ctx=kind-$cluster

step() { printf '\n=== %s\n' "$*"; }
fail() { echo "e2e/kind: FAILED: $*" >&2; exit 1; }
k() { kubectl --context "$ctx" "$@"; }

for tool in docker kind kubectl base64; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (see e2e/kind/README.md)"
done
[ -x "$helm" ] || fail "no helm: install it, or run scripts/validate-manifests.sh once to fetch one"
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer"

created=0
diagnostics() {
  local rc=$?
  if [ "$rc" -ne 0 ] && kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    echo "--- diagnostics" >&2
    k get sipstack,pods,svc,endpoints,lease -A -o wide >&2 || true
    k -n "$ns" get events --sort-by=.lastTimestamp >&2 || true
    k -n "$system_ns" logs deployment/"$release" --all-containers --tail=200 >&2 || true
  fi
  if [ "$created" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap diagnostics EXIT

# Polls `$@` (a command printing one value) until it prints $want, for $timeout s.
wait_for() {
  local what=$1 want=$2; shift 2
  local deadline=$((SECONDS + timeout)) got=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    got=$("$@" 2>/dev/null || true)
    if [ "$got" = "$want" ]; then
      echo "$what: $got (after $((SECONDS - ${start:-0})) s)"
      return 0
    fi
    sleep 3
  done
  fail "$what: wanted $want, still $got after ${timeout}s"
}

step "image $image"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  docker build -f operator/Dockerfile -t "$image" .
fi

step "kind cluster $cluster"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  [ "${REUSE_CLUSTER:-0}" = 1 ] || fail "a kind cluster $cluster exists; delete it or set REUSE_CLUSTER=1"
else
  kind create cluster --name "$cluster" --config e2e/kind/kind-config.yaml --wait 180s
  created=1
fi
kind load docker-image "$image" --name "$cluster"

step "helm install $release (chart charts/sipstack)"
"$helm" --kube-context "$ctx" upgrade --install "$release" charts/sipstack \
  --namespace "$system_ns" --create-namespace \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
  --set logLevel=info,sipstack_operator=debug \
  --wait --timeout 5m
k -n "$system_ns" rollout status deployment/"$release" --timeout=180s
k get crd sipedges.sipstack.io mediapools.sipstack.io pgclusters.sipstack.io

step "platform: kubectl apply -f examples/platform.yaml (namespace $ns)"
k create namespace "$ns" --dry-run=client -o yaml | k apply -f -
k -n "$ns" apply -f examples/platform.yaml
for resource in pgcluster/pg mediapool/media sipedge/edge; do
  start=$SECONDS
  k -n "$ns" wait --for=condition=Ready "$resource" --timeout="${timeout}s"
  echo "$resource Ready after $((SECONDS - start)) s"
done
k -n "$ns" get sipstack

primary() { k -n "$ns" get pgcluster pg -o jsonpath='{.status.primary}'; }
sql() {
  local pod password
  pod=$(primary)
  password=$(k -n "$ns" get secret pg-superuser -o jsonpath='{.data.password}' | base64 -d)
  k -n "$ns" exec "$pod" -- env PGPASSWORD="$password" \
    psql -h 127.0.0.1 -U postgres -d sipstack -Atc "$1"
}
static_members=$(k -n "$ns" get mediapool media -o jsonpath='{.spec.members[*].uri}' | wc -w)
set_id=$(k -n "$ns" get mediapool media -o jsonpath='{.spec.setId}')
rows() { sql "select count(*) from dispatcher where setid = $set_id"; }

step "MediaPool media: dispatcher set $set_id follows the replicas"
sql "select setid, destination, flags from dispatcher order by setid, destination"
for replicas in 3 1; do
  k -n "$ns" scale mediapool/media --replicas="$replicas"
  start=$SECONDS
  wait_for "ready replicas of media" "$replicas" \
    k -n "$ns" get mediapool media -o jsonpath='{.status.readyReplicas}'
  wait_for "dispatcher rows of set $set_id" "$((replicas + static_members))" rows
  sql "select setid, destination, flags from dispatcher where setid = $set_id order by destination"
done

step "PgCluster pg: 3 members, then the primary's pod is deleted"
k -n "$ns" patch pgcluster pg --type merge -p '{"spec":{"instances":3}}'
start=$SECONDS
wait_for "ready members of pg" 3 k -n "$ns" get pgcluster pg -o jsonpath='{.status.readyInstances}'
k -n "$ns" wait --for=condition=Ready pgcluster/pg --timeout="${timeout}s"
old=$(primary)
[ -n "$old" ] || fail "PgCluster pg names no primary"
echo "primary: $old (leader Endpoints: $(k -n "$ns" get endpoints pg -o jsonpath='{.metadata.annotations.leader}'))"
sql "create table if not exists e2e_failover (id int primary key); insert into e2e_failover values (1) on conflict do nothing"
k -n "$ns" delete pod "$old" --wait=false
start=$SECONDS
deadline=$((SECONDS + timeout))
while :; do
  now=$(primary 2>/dev/null || true)
  if [ -n "$now" ] && [ "$now" != "$old" ]; then
    echo "failover: $old -> $now after $((SECONDS - start)) s"
    break
  fi
  [ "$SECONDS" -lt "$deadline" ] || fail "no new primary ${timeout}s after deleting $old"
  sleep 1
done
k -n "$ns" wait --for=condition=Ready pgcluster/pg --timeout="${timeout}s"
[ "$(sql 'select count(*) from e2e_failover')" = 1 ] || fail "the row written before the failover is gone"
echo "the row written before the failover is there"

step "operator: 2 replicas, the leader's pod is deleted"
"$helm" --kube-context "$ctx" upgrade "$release" charts/sipstack --namespace "$system_ns" \
  --reuse-values --set replicas=2 --wait --timeout 5m
holder() { k -n "$system_ns" get lease sipstack-operator -o jsonpath='{.spec.holderIdentity}'; }
leader=$(holder)
[ -n "$leader" ] || fail "nobody holds the Lease sipstack-operator"
echo "leader: $leader"
k -n "$system_ns" delete pod "$leader" --wait=false
start=$SECONDS
deadline=$((SECONDS + 120))
while :; do
  now=$(holder 2>/dev/null || true)
  if [ -n "$now" ] && [ "$now" != "$leader" ]; then
    echo "leadership: $leader -> $now after $((SECONDS - start)) s"
    break
  fi
  [ "$SECONDS" -lt "$deadline" ] || fail "no other replica took the Lease over within 120 s"
  sleep 1
done
# the new leader reconciles: a change made now is applied
k -n "$ns" scale mediapool/media --replicas=2
start=$SECONDS
wait_for "ready replicas of media under the new leader" 2 \
  k -n "$ns" get mediapool media -o jsonpath='{.status.readyReplicas}'

step "e2e/kind: all steps passed"
