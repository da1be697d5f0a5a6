{{/* The chart's name, at most 63 characters. */}}
{{- define "sipstack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The name of the release's objects: the release name when it already holds the chart's
name, else "<release>-<chart>"; at most 63 characters (a DNS label, as Services need).
*/}}
{{- define "sipstack.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "sipstack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The labels that select the operator's pods; never change them in an upgrade.
The NetworkPolicies the operator makes admit its pods by two of them, whatever the
release: app.kubernetes.io/name (the chart's name, OPERATOR_APP in operator/src/meta.rs)
and app.kubernetes.io/component (OPERATOR_COMPONENT there). operator/tests/chart.rs keeps
them equal; "sipstack.validate" refuses a nameOverride, which would change the first.
*/}}
{{- define "sipstack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sipstack.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "sipstack.labels" -}}
helm.sh/chart: {{ include "sipstack.chart" . }}
{{ include "sipstack.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sipstack
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "sipstack.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sipstack.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image reference: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "sipstack.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Refuses combinations of values that cannot work. */}}
{{- define "sipstack.validate" -}}
{{- if and (not .Values.leaderElection.enabled) (gt (int .Values.replicas) 1) -}}
{{- fail "replicas > 1 needs leaderElection.enabled=true: without a leader every replica would act on the same resources" -}}
{{- end -}}
{{- if and .Values.nameOverride (ne .Values.nameOverride .Chart.Name) -}}
{{- fail (printf "nameOverride=%s would change the label app.kubernetes.io/name of the operator's pods, by which the NetworkPolicies the operator makes admit it (to PostgreSQL, PgBouncer and the media nodes' event socket); leave it empty and use fullnameOverride to rename the chart's objects" .Values.nameOverride) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled=true needs metrics.service.enabled=true: the ServiceMonitor selects the metrics Service" -}}
{{- end -}}
{{- end -}}
