{{/* Names, labels and the wiring shared by the templates. */}}

{{- define "matchmaking.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "matchmaking.fullname" -}}
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

{{- define "matchmaking.scoring.fullname" -}}
{{- printf "%s-scoring" (include "matchmaking.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "matchmaking.mlflow.fullname" -}}
{{- printf "%s-mlflow" (include "matchmaking.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "matchmaking.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "matchmaking.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: matchmaking
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include "matchmaking.selectorLabels" (list . "scoring") */}}
{{- define "matchmaking.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "matchmaking.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* repository:tag or repository@digest; tag defaults to appVersion. Arg: (list . .Values.image) */}}
{{- define "matchmaking.image" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "matchmaking.scoring.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "matchmaking.scoring.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "matchmaking.mlflow.serviceAccountName" -}}
{{- if .Values.mlflow.serviceAccount.create }}
{{- default (include "matchmaking.mlflow.fullname" .) .Values.mlflow.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.mlflow.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The in-cluster DNS name of the tracking server's Service. */}}
{{- define "matchmaking.mlflow.host" -}}
{{- printf "%s.%s.svc.cluster.local" (include "matchmaking.mlflow.fullname" .) .Release.Namespace }}
{{- end }}

{{/* Registry of the scoring service: config.trackingUri, else the in-chart server, else fail. */}}
{{- define "matchmaking.trackingUri" -}}
{{- if .Values.config.trackingUri }}
{{- .Values.config.trackingUri }}
{{- else if .Values.mlflow.enabled }}
{{- printf "http://%s:%v" (include "matchmaking.mlflow.host" .) .Values.mlflow.service.port }}
{{- else }}
{{- required "config.trackingUri is required when mlflow.enabled is false" .Values.config.trackingUri }}
{{- end }}
{{- end }}

{{- define "matchmaking.mlflow.claimName" -}}
{{- default (printf "%s-artifacts" (include "matchmaking.mlflow.fullname" .)) .Values.mlflow.artifacts.pvc.existingClaim }}
{{- end }}

{{/*
The scoring pools, as a YAML list: one pool named like the chart's scoring service when
`shards` is empty, else one per shard (<fullname>-scoring-<shard>). Each pool's model cache
holds its hot cities (by default all of its cities); a smaller maxModels fails the render.
*/}}
{{- define "matchmaking.pools" -}}
{{- $pools := list }}
{{- $c := .Values.config }}
{{- if .Values.shards }}
{{- range .Values.shards }}
{{- $hot := .hotCities | default (without .cities "*") }}
{{- $catchAll := has "*" .cities }}
{{- $fit := len $hot }}
{{- if $catchAll }}{{ $fit = max $c.maxModels (len $hot) }}{{ end }}
{{- $maxModels := .maxModels | default $fit }}
{{- if lt (int $maxModels) (len $hot) }}
{{- fail (printf "shards[%s].maxModels is %d but the pool has %d hot cities: its cache must hold them (leave maxModels out to size it to its cities)" .name (int $maxModels) (len $hot)) }}
{{- end }}
{{- $pools = append $pools (dict
    "fullname" (printf "%s-%s" (include "matchmaking.scoring.fullname" $) .name | trunc 63 | trimSuffix "-")
    "shard" .name
    "hotCities" $hot
    "maxModels" (max 1 (int $maxModels))
    "replicaCount" (.replicaCount | default $.Values.replicaCount)
    "minReplicas" (.minReplicas | default $.Values.autoscaling.minReplicas)
    "maxReplicas" (.maxReplicas | default $.Values.autoscaling.maxReplicas)
    "resources" (.resources | default $.Values.resources)) }}
{{- end }}
{{- else }}
{{- if lt (int $c.maxModels) (len $c.hotCities) }}
{{- fail (printf "config.maxModels is %d but config.hotCities names %d cities: the cache must hold the hot set (the service refuses to start otherwise)" (int $c.maxModels) (len $c.hotCities)) }}
{{- end }}
{{- $pools = append $pools (dict
    "fullname" (include "matchmaking.scoring.fullname" .)
    "shard" ""
    "hotCities" $c.hotCities
    "maxModels" (int $c.maxModels)
    "replicaCount" .Values.replicaCount
    "minReplicas" .Values.autoscaling.minReplicas
    "maxReplicas" .Values.autoscaling.maxReplicas
    "resources" .Values.resources) }}
{{- end }}
{{- toYaml $pools }}
{{- end }}

{{/* The shard map every pool is given (MATCHMAKING_SERVE_SHARDS): pool -> cities, as JSON. */}}
{{- define "matchmaking.shardMap" -}}
{{- $map := dict }}
{{- range .Values.shards }}{{ $_ := set $map .name .cities }}{{ end }}
{{- toJson $map }}
{{- end }}

{{/* Selector labels of one scoring pool: include "matchmaking.pool.selectorLabels" (list $ $pool) */}}
{{- define "matchmaking.pool.selectorLabels" -}}
{{- $root := index . 0 -}}
{{- $pool := index . 1 -}}
{{ include "matchmaking.selectorLabels" (list $root "scoring") }}
{{- if $pool.shard }}
matchmaking.io/pool: {{ $pool.shard }}
{{- end }}
{{- end }}
