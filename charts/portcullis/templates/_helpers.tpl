{{/* The release's base name. */}}
{{- define "portcullis.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "portcullis.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "portcullis.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The Secret holding keys.yaml and operator-key. */}}
{{- define "portcullis.keysSecret" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "portcullis.fullname" .)) -}}
{{- end -}}

{{- define "portcullis.fdbConfigMap" -}}
{{- .Values.store.foundationdb.clusterFileConfigMap | default (printf "%s-config" .Values.store.foundationdb.clusterName) -}}
{{- end -}}

{{/* policy/v1 where the cluster serves it (1.21+), policy/v1beta1 before. */}}
{{- define "portcullis.pdbApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget" -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{- define "portcullis.scheme" -}}
{{- if .Values.service.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* The admission webhook's Service and the Secret with its certificate. */}}
{{- define "portcullis.webhookService" -}}
{{ include "portcullis.fullname" . }}-operator-webhook
{{- end }}

{{- define "portcullis.webhookSecret" -}}
{{ include "portcullis.fullname" . }}-webhook-tls
{{- end }}
