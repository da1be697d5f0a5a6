{{/*
The rules of the operator, derived from operator/src/controller (scripts/validate-manifests.sh
checks that they cover every kind `sipstack-operator manifests` prints and every rule of
the Roles the operator makes):

- The three resources: the controllers list and watch them, a SipEdge's reconcile gets
  its PgCluster and MediaPools, a MediaPool's cleanup lists all three in its namespace.
  MediaPools are patched to add and remove the finalizer sipstack.io/dispatcher-cleanup
  (a JSON patch of metadata.finalizers: the main resource, not mediapools/finalizers; the
  children's owner references do not set blockOwnerDeletion). Status: a merge patch of
  the status subresource.
- Children (controller/apply.rs): listed and watched by label, applied server-side (a
  PATCH that creates a missing object, which the API server authorises as `create` too),
  deleted when the spec no longer asks for them; generated Secrets are created once, and
  a MediaPool's cleanup gets the PgCluster's app Secret for the database credentials.
- NetworkPolicies (networking.k8s.io): children like the others (ChildKind::NetworkPolicy):
  a MediaPool's `<pool>-freeswitch`, a PgCluster's `<cluster>-postgres` and, with
  PgBouncer, `<cluster>-pgbouncer` (operator/src/network_policy.rs). A PgCluster's reconcile
  lists the SipEdges and MediaPools of its namespace (granted above): what the policies
  admit depends on whether its clients run on the nodes' network.
- Endpoints: a PgCluster's status names the primary from Patroni's leader Endpoints (get).
- EndpointSlices (discovery.k8s.io): a MediaPool's dispatcher members are the endpoints
  of its headless Service; the MediaPool controller watches the slices (list, watch) and
  its reconcile lists them by the label kubernetes.io/service-name; get goes with them,
  as for every kind the operator reads. The dispatcher sync also reads the PgCluster's
  app Secret (granted above) to connect to the platform database.
- RBAC escalation: the operator makes a Role for Patroni (operator/src/pgcluster.rs) with
  configmaps and endpoints create/get/list/patch/update/watch/delete, pods
  get/list/patch/update/watch and services create, and binds it. The API server lets a
  subject create or bind a Role only with every permission in it (short of the
  `escalate`/`bind` verbs, which would allow far more), so the operator holds those too:
  that is the only reason for `update` on configmaps, the endpoints writes and the pods rules.
- Events: kube-runtime's Recorder creates events.k8s.io Events in the resource's namespace
  and patches them when the same event repeats.
*/}}
{{- define "sipstack.operatorRules" -}}
- apiGroups: [sipstack.io]
  resources: [sipedges, pgclusters]
  verbs: [get, list, watch]
- apiGroups: [sipstack.io]
  resources: [mediapools]
  verbs: [get, list, watch, patch]
- apiGroups: [sipstack.io]
  resources: [sipedges/status, mediapools/status, pgclusters/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [secrets, services, serviceaccounts]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps, endpoints]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch, update]
- apiGroups: [apps]
  resources: [statefulsets, deployments, daemonsets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
