{{/*
Names, labels and the small pieces every template of the suite shares. A "service context" is a
dict with the root context (`root`), the service's key in `.Values.services` (`name`) and its
values merged over `.Values.serviceDefaults` (`svc`).
*/}}

{{- define "complaints.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-wide prefix of every object name. */}}
{{- define "complaints.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "complaints.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object (root context). */}}
{{- define "complaints.labels" -}}
helm.sh/chart: {{ include "complaints.chart" . }}
app.kubernetes.io/name: {{ include "complaints.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: complaints
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector of one component: a service name, or "migration", "database-bootstrap", ... */}}
{{- define "complaints.selectorLabels" -}}
app.kubernetes.io/name: {{ include "complaints.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Full labels of one component: (dict "root" $ "component" "intake") */}}
{{- define "complaints.componentLabels" -}}
{{ include "complaints.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Object name of one service's resources: <fullname>-<service>. */}}
{{- define "complaints.serviceFullname" -}}
{{- printf "%s-%s" (include "complaints.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "complaints.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Secret holding DATABASE_URL (and `password`) of one service. */}}
{{- define "complaints.databaseSecretName" -}}
{{- if .svc.database.existingSecret }}
{{- .svc.database.existingSecret }}
{{- else }}
{{- printf "%s-db" (include "complaints.serviceFullname" .) }}
{{- end }}
{{- end }}

{{- define "complaints.databaseHost" -}}
{{- if .Values.database.host }}
{{- .Values.database.host }}
{{- else if .Values.postgresql.enabled }}
{{- printf "%s-postgresql" (include "complaints.fullname" .) }}
{{- else }}
{{- fail "database.host is required when postgresql.enabled is false" }}
{{- end }}
{{- end }}

{{- define "complaints.databaseAdminSecretName" -}}
{{- .Values.database.bootstrap.existingSecret | default (printf "%s-db-admin" (include "complaints.fullname" .)) }}
{{- end }}

{{- define "complaints.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "complaints.fullname" .)) }}
{{- end }}

{{- define "complaints.surveySecretName" -}}
{{- .Values.survey.existingSecret | default (printf "%s-survey" (include "complaints.fullname" .)) }}
{{- end }}

{{/*
A password that stays the same across upgrades: the value given, else the one already in the
Secret (lookup; empty when rendering offline), else a new random one.
(dict "root" $ "secret" "<name>" "key" "password" "value" "<given>")
*/}}
{{- define "complaints.stablePassword" -}}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Hook annotations: (dict "hook" "pre-install,pre-upgrade" "weight" "-10" "delete" "before-hook-creation") */}}
{{- define "complaints.hookAnnotations" -}}
helm.sh/hook: {{ .hook }}
helm.sh/hook-weight: {{ .weight | quote }}
{{- if .delete }}
helm.sh/hook-delete-policy: {{ .delete }}
{{- end }}
{{- end }}

{{- define "complaints.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "complaints.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* NetworkPolicy egress rules every pod of the suite needs: DNS and PostgreSQL. */}}
{{- define "complaints.egressDnsAndDatabase" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns.peers | nindent 4 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
- to:
    {{- if .Values.postgresql.enabled }}
    - podSelector:
        matchLabels:
          {{- include "complaints.selectorLabels" (dict "root" . "component" "dev-postgresql") | nindent 10 }}
    {{- end }}
    {{- with .Values.networkPolicy.database.peers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - protocol: TCP
      port: {{ .Values.database.port }}
{{- end }}
