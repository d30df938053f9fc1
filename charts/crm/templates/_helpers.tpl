{{/*
Everything a template needs about a service is computed once, here, by "crm.services": the merged values
(defaults under the service's own), names, image, secrets and the call graph. Every other template ranges
over its result, so there is one place that knows how a service becomes Kubernetes objects.
*/}}

{{- define "crm.prefix" -}}
{{- .Values.global.namePrefix | default .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "crm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "crm.commonLabels" -}}
helm.sh/chart: {{ include "crm.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "crm.prefix" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels that pick a service's pods across releases (NetworkPolicy peers): every release of one install
shares the prefix (part-of), so a per-service release still finds the others.
ctx: (dict "root" $ "name" <service> "component" server|migrate)
*/}}
{{- define "crm.peerLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: {{ include "crm.prefix" .root }}
app.kubernetes.io/component: {{ .component | default "server" }}
{{- end -}}

{{/* Selector labels of one release's pods of one service (Deployment, Service, PDB). */}}
{{- define "crm.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component | default "server" }}
{{- end -}}

{{- define "crm.labels" -}}
{{ include "crm.commonLabels" .root }}
{{ include "crm.selectorLabels" . }}
{{- end -}}

{{/* checkov skip annotations from a list of "CKV_K8S_nn=reason" strings. */}}
{{- define "crm.checkovSkips" -}}
{{- range $i, $skip := . }}
checkov.io/skip{{ add1 $i }}: {{ $skip | quote }}
{{- end }}
{{- end -}}

{{/*
The services this release renders, fully resolved, as YAML {items: [...]}: enabled, and named in
global.onlyServices when that is set. Fails on every inconsistency and, in production, on every missing
secret, so a bad configuration never reaches the cluster.
*/}}
{{- define "crm.services" -}}
{{- $root := . -}}
{{- $prefix := include "crm.prefix" . -}}
{{- $production := eq .Values.global.environment "production" -}}
{{- $known := keys .Values.services | sortAlpha -}}
{{- range .Values.global.onlyServices }}
{{- if not (has . $known) }}
{{- fail (printf "global.onlyServices names %q, which is not one of services: %s" . (join ", " $known)) }}
{{- end }}
{{- end }}
{{- $items := list -}}
{{- $missing := list -}}
{{- $natsMissing := list -}}
{{- range $name := $known }}
{{- $raw := index $root.Values.services $name }}
{{- $selected := and $raw.enabled (or (empty $root.Values.global.onlyServices) (has $name $root.Values.global.onlyServices)) }}
{{- if $selected }}
{{- $s := mergeOverwrite (deepCopy $root.Values.defaults) (deepCopy $raw) }}
{{- $fullname := printf "%s-%s" $prefix $name }}
{{- $_ := set $s "name" $name }}
{{- $_ := set $s "fullname" $fullname }}
{{- $_ := set $s "module" (printf "crm_%s" $name) }}
{{- if eq $s.protocol "grpc" }}
{{- $_ := set $s "port" 50051 }}
{{- $_ := set $s "portName" "grpc" }}
{{- else if eq $s.protocol "http" }}
{{- $_ := set $s "port" 8000 }}
{{- $_ := set $s "portName" "http" }}
{{- else }}
{{- fail (printf "services.%s.protocol must be grpc or http, not %q" $name $s.protocol) }}
{{- end }}
{{- range $s.calls }}
{{- if not (has . $known) }}
{{- fail (printf "services.%s.calls names %q, which is not one of services: %s" $name . (join ", " $known)) }}
{{- end }}
{{- end }}
{{- /* Who calls this service: every service (enabled or not, in this release or another) listing it. */}}
{{- $callers := list }}
{{- range $other := $known }}
{{- if has $name ((index $root.Values.services $other).calls | default list) }}
{{- $callers = append $callers $other }}
{{- end }}
{{- end }}
{{- $_ := set $s "callers" $callers }}

{{- /* Image: <registry>/<prefix><name>[:tag][@digest]; a service's own image values win. */}}
{{- $img := $s.image | default dict }}
{{- $repo := $img.repository | default (printf "%s%s" $root.Values.image.repositoryPrefix $name) }}
{{- if and (not $img.repository) $root.Values.image.registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" $root.Values.image.registry) $repo }}
{{- end }}
{{- $tag := $img.tag | default $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- $digest := $img.digest | default "" }}
{{- $ref := printf "%s:%s" $repo $tag }}
{{- if $digest }}{{ $ref = printf "%s@%s" $ref $digest }}{{ end }}
{{- $pullPolicy := $img.pullPolicy | default $root.Values.image.pullPolicy | default (ternary "IfNotPresent" "Always" (not (empty $digest))) }}
{{- $_ := set $s "imageRef" $ref }}
{{- $_ := set $s "imageTag" $tag }}
{{- $_ := set $s "pullPolicy" $pullPolicy }}

{{- /* Secrets: inline values go into the chart's Secret; existingSecret names one of yours. */}}
{{- $secretData := dict }}
{{- $secretEnv := list }}
{{- $plainEnv := list }}
{{- $db := $s.database | default dict }}
{{- if $db.enabled }}
{{- if $db.existingSecret }}
{{- $secretEnv = append $secretEnv (dict "name" "CRM_DATABASE_URL" "secret" $db.existingSecret "key" ($db.existingSecretKey | default "database-url")) }}
{{- else if $db.url }}
{{- $_ := set $secretData "database-url" $db.url }}
{{- $secretEnv = append $secretEnv (dict "name" "CRM_DATABASE_URL" "secret" $fullname "key" "database-url") }}
{{- else if $production }}
{{- $missing = append $missing (printf "services.%s.database.url or services.%s.database.existingSecret (CRM_DATABASE_URL: postgresql+asyncpg://<role>:<password>@<host>:5432/<database>, one database and role per service)" $name $name) }}
{{- else }}
{{- $plainEnv = append $plainEnv (dict "name" "CRM_DATABASE_URL" "value" (printf "postgresql+asyncpg://crm_%s@%s:%v/crm_%s" $name $root.Values.postgres.host $root.Values.postgres.port $name)) }}
{{- end }}
{{- end }}
{{- /* Other secrets, declared per service under `secrets:` (env, key, value or existingSecret). */}}
{{- range $id := keys ($s.secrets | default dict) | sortAlpha }}
{{- $sec := index $s.secrets $id }}
{{- $where := printf "services.%s.secrets.%s" $name $id }}
{{- if $sec.existingSecret }}
{{- $secretEnv = append $secretEnv (dict "name" $sec.env "secret" $sec.existingSecret "key" $sec.key) }}
{{- else if $sec.value }}
{{- if and $sec.mustContain (not (contains $sec.mustContain $sec.value)) }}
{{- fail (printf "%s.value must be %s" $where $sec.description) }}
{{- end }}
{{- if lt (len $sec.value) (int ($sec.minLength | default 1)) }}
{{- fail (printf "%s.value must be at least %v characters: %s" $where $sec.minLength $sec.description) }}
{{- end }}
{{- $_ := set $secretData $sec.key $sec.value }}
{{- $secretEnv = append $secretEnv (dict "name" $sec.env "secret" $fullname "key" $sec.key) }}
{{- else if and $production $sec.requiredInProduction }}
{{- $missing = append $missing (printf "%s.value or %s.existingSecret (%s: %s)" $where $where $sec.env $sec.description) }}
{{- end }}
{{- end }}
{{- /* NATS: the service's own user (crm_kit.settings: CRM_NATS_USER / CRM_NATS_PASSWORD) and TLS. */}}
{{- $natsAuth := $root.Values.nats.auth | default dict }}
{{- if and $s.nats $natsAuth.enabled }}
{{- $plainEnv = append $plainEnv (dict "name" "CRM_NATS_USER" "value" (include "crm.natsUser" (dict "root" $root "name" $name))) }}
{{- $np := $s.natsPassword | default dict }}
{{- if $np.existingSecret }}
{{- $secretEnv = append $secretEnv (dict "name" "CRM_NATS_PASSWORD" "secret" $np.existingSecret "key" ($np.existingSecretKey | default "nats-password")) }}
{{- else if $np.value }}
{{- if not (regexMatch "^[A-Za-z][A-Za-z0-9_+/=.-]{23,}$" $np.value) }}
{{- fail (printf "services.%s.natsPassword.value must be 24+ characters, start with a letter, and hold only letters, digits and _ + / = . - (the NATS server reads it from its environment; p + openssl rand -hex 24 is one)" $name) }}
{{- end }}
{{- $_ := set $secretData "nats-password" $np.value }}
{{- $secretEnv = append $secretEnv (dict "name" "CRM_NATS_PASSWORD" "secret" $fullname "key" "nats-password") }}
{{- else }}
{{- $natsMissing = append $natsMissing (printf "services.%s.natsPassword.value or services.%s.natsPassword.existingSecret (CRM_NATS_PASSWORD: 24+ characters starting with a letter, e.g. p + openssl rand -hex 24)" $name $name) }}
{{- end }}
{{- end }}
{{- /* Sizes: /tmp and the spool are emptyDirs; ephemeral-storage covers both plus the margin. */}}
{{- $ephemeral := add (include "crm.mebibytes" $s.tmpSizeLimit) (include "crm.mebibytes" $s.spool.sizeLimit) (include "crm.mebibytes" $s.ephemeralStorageMargin) }}
{{- $resources := deepCopy $s.resources }}
{{- $_ := set (get $resources "requests") "ephemeral-storage" (printf "%dMi" $ephemeral) }}
{{- $_ := set (get $resources "limits") "ephemeral-storage" (printf "%dMi" $ephemeral) }}
{{- $_ := set $s "resources" $resources }}
{{- if and $s.nats $root.Values.nats.existingSecret }}
{{- $secretEnv = append $secretEnv (dict "name" "CRM_NATS_URL" "secret" $root.Values.nats.existingSecret "key" $root.Values.nats.existingSecretKey) }}
{{- end }}
{{- $_ := set $s "secretData" $secretData }}
{{- $_ := set $s "secretEnv" $secretEnv }}
{{- $_ := set $s "plainEnv" $plainEnv }}

{{- /* checkov findings this configuration accepts on purpose, each with its reason. */}}
{{- $skips := list }}
{{- if not $digest }}
{{- $skips = append $skips (printf "CKV_K8S_43=Image named by an immutable release tag; set services.%s.image.digest (the skaffold production profile does) to pin it by digest" $name) }}
{{- if ne $pullPolicy "Always" }}
{{- $skips = append $skips "CKV_K8S_15=image.pullPolicy chosen in values: images loaded straight into a local cluster have no registry to pull from" }}
{{- end }}
{{- end }}
{{- if $secretEnv }}
{{- $skips = append $skips "CKV_K8S_35=The services read settings from environment variables (pydantic-settings); the values come from Secrets by secretKeyRef and are never in the manifest" }}
{{- end }}
{{- $_ := set $s "checkovSkips" $skips }}
{{- $items = append $items $s }}
{{- end }}
{{- end }}
{{- if $missing }}
{{- fail (printf "production needs every secret; missing:\n  - %s" (join "\n  - " $missing)) }}
{{- end }}
{{- if $natsMissing }}
{{- fail (printf "nats.auth.enabled needs every service's NATS password; missing:\n  - %s" (join "\n  - " $natsMissing)) }}
{{- end }}
{{- $nats := .Values.nats }}
{{- if $production }}
{{- if not $nats.auth.enabled }}
{{- fail "production needs nats.auth.enabled=true: each service its own NATS user, limited to its subjects" }}
{{- end }}
{{- if not $nats.tls.enabled }}
{{- fail "production needs nats.tls.enabled=true (and a tls:// nats.url): events carry every tenant's data" }}
{{- end }}
{{- end }}
{{- if and $nats.tls.enabled (not $nats.existingSecret) (not (hasPrefix "tls://" $nats.url)) }}
{{- fail (printf "nats.tls.enabled needs a tls:// nats.url, not %q" $nats.url) }}
{{- end }}
{{- toYaml (dict "items" $items) }}
{{- end -}}

{{/* Pod-level securityContext: non-root numeric user, RuntimeDefault seccomp. ctx: a resolved service. */}}
{{- define "crm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
fsGroup: {{ .runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container securityContext: no privilege, no escalation, no capabilities, read-only root. */}}
{{- define "crm.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The environment every container of a service gets (server and migration Job alike).
ctx: (dict "root" $ "s" <resolved service>)
*/}}
{{- define "crm.env" -}}
{{- $root := .root -}}
{{- $s := .s -}}
{{- $prefix := include "crm.prefix" $root -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: CRM_ENVIRONMENT
  value: {{ $root.Values.global.environment | quote }}
- name: CRM_SERVICE_NAME
  value: {{ $s.name | quote }}
- name: CRM_LOG_LEVEL
  value: {{ $root.Values.global.logLevel | quote }}
- name: CRM_LOG_FORMAT
  value: {{ $root.Values.global.logFormat | quote }}
- name: CRM_SHUTDOWN_GRACE_SECONDS
  value: {{ $root.Values.shutdown.graceSeconds | quote }}
- name: CRM_DATA_DIR
  value: /tmp/crm-data
- name: CRM_SPOOL_DIR
  value: {{ $s.spool.mountPath | quote }}
- name: CRM_SPOOL_MAX_BYTES
  value: {{ mul (include "crm.mebibytes" $s.spool.budget) 1048576 | quote }}
{{- if eq $s.protocol "grpc" }}
- name: CRM_GRPC_PORT
  value: "50051"
{{- else }}
- name: CRM_HTTP_PORT
  value: "8000"
{{- end }}
{{- if $s.nats }}
{{- if not $root.Values.nats.existingSecret }}
- name: CRM_NATS_URL
  value: {{ required "nats.url (or nats.existingSecret) is required" $root.Values.nats.url | quote }}
{{- end }}
- name: CRM_EVENTS_NAMESPACE
  value: {{ $root.Values.global.eventsNamespace | quote }}
- name: CRM_EVENTS_STREAM_REPLICAS
  value: {{ $root.Values.nats.streamReplicas | quote }}
{{- if $root.Values.nats.tls.enabled }}
{{- if $root.Values.nats.tls.caSecret }}
- name: CRM_NATS_TLS_CA_FILE
  value: /etc/crm/nats-tls/ca/{{ $root.Values.nats.tls.caKey }}
{{- end }}
{{- if $root.Values.nats.tls.clientCertSecret }}
- name: CRM_NATS_TLS_CERT_FILE
  value: /etc/crm/nats-tls/client/tls.crt
- name: CRM_NATS_TLS_KEY_FILE
  value: /etc/crm/nats-tls/client/tls.key
{{- end }}
{{- end }}
{{- end }}
{{- range $s.plainEnv }}
- name: {{ .name }}
  value: {{ .value | quote }}
{{- end }}
{{- range $s.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end }}
{{- range $s.calls }}
- name: {{ upper . }}_SERVICE_ADDR
  value: {{ printf "dns:///%s-%s-headless:50051" $prefix . | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "crm-%s" $s.name | quote }}
- name: OTEL_TRACES_EXPORTER
  value: {{ ternary "otlp" "none" $root.Values.otel.enabled | quote }}
- name: OTEL_METRICS_EXPORTER
  value: {{ ternary "otlp" "none" $root.Values.otel.enabled | quote }}
{{- if $root.Values.otel.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ required "otel.endpoint is required when otel.enabled" $root.Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $root.Values.otel.protocol | quote }}
{{- end }}
{{- $attrs := list "service.namespace=crm" (printf "deployment.environment.name=%s" $root.Values.global.environment) (printf "service.version=%s" $s.imageTag) "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.pod.name=$(POD_NAME)" }}
{{- range $k, $v := $root.Values.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- with $s.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Egress every pod needs: DNS. */}}
{{- define "crm.egressDns" -}}
- to:
    {{- toYaml .Values.dns.networkPeers | nindent 4 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}

{{/* An egress rule to a port, to given peers or (none given) any address. ctx: (dict "peers" .. "port" ..) */}}
{{- define "crm.egressTo" -}}
- ports:
    - protocol: TCP
      port: {{ .port }}
  {{- with .peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* A size "64Mi" or "1Gi" in mebibytes (the schema allows only those two units). */}}
{{- define "crm.mebibytes" -}}
{{- $n := int (regexFind "^[0-9]+" .) -}}
{{- if hasSuffix "Gi" . }}{{ mul $n 1024 }}{{ else }}{{ $n }}{{ end -}}
{{- end -}}

{{/* The NATS user of a service. ctx: (dict "root" $ "name" <service>) */}}
{{- define "crm.natsUser" -}}
{{- printf "%s-%s" (include "crm.prefix" .root) .name -}}
{{- end -}}

{{/*
The NATS permissions of a service, as YAML {publish: [...], subscribe: [...]}: the same derivation as
crm_kit.events.permissions.nats_permissions (deploy/check.py compares both for every service).
ctx: (dict "root" $ "name" <service> "events" <services.<name>.events merged over defaults.events>)
*/}}
{{- define "crm.natsPermissions" -}}
{{- $ns := .root.Values.global.eventsNamespace -}}
{{- $name := .name -}}
{{- $ev := .events | default dict -}}
{{- $pre := ternary (printf "%s." $ns) "" (ne $ns "") -}}
{{- $streamPre := ternary (printf "%s_" $ns) "" (ne $ns "") -}}
{{- $consumed := list -}}
{{- range ($ev.consumes | default list | uniq | sortAlpha) }}
{{- $consumed = append $consumed (printf "%sCRM_%s" $streamPre (upper .)) }}
{{- end }}
{{- $ensured := list -}}
{{- if $ev.produces }}{{ $ensured = append $ensured (printf "%sCRM_%s" $streamPre (upper $name)) }}{{ end }}
{{- $ensured = concat $ensured $consumed | uniq -}}
{{- $publish := list -}}
{{- if $ev.produces }}
{{- $publish = append $publish (printf "%scrm.%s.>" $pre $name) }}
{{- $publish = append $publish (printf "%sdlq.%s.>" $pre $name) }}
{{- end }}
{{- if $ensured }}
{{- $publish = append $publish "$JS.API.INFO" }}
{{- range (append $ensured (printf "%sCRM_DEAD_LETTERS" $streamPre)) }}
{{- $publish = concat $publish (list (printf "$JS.API.STREAM.CREATE.%s" .) (printf "$JS.API.STREAM.UPDATE.%s" .) (printf "$JS.API.STREAM.INFO.%s" .)) }}
{{- end }}
{{- end }}
{{- range $consumed }}
{{- $publish = concat $publish (list (printf "$JS.API.CONSUMER.CREATE.%s.>" .) (printf "$JS.API.CONSUMER.DURABLE.CREATE.%s.>" .) (printf "$JS.API.CONSUMER.INFO.%s.>" .) (printf "$JS.API.CONSUMER.MSG.NEXT.%s.>" .) (printf "$JS.API.STREAM.MSG.GET.%s" .) (printf "$JS.ACK.%s.>" .)) }}
{{- end }}
{{- $subscribe := list (printf "_INBOX.%s.>" $name) -}}
{{- range ($ev.follows | default list | uniq | sortAlpha) }}
{{- $subscribe = append $subscribe (printf "%s%s" $pre .) }}
{{- end }}
{{- range $consumed }}
{{- $subscribe = append $subscribe (printf "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.%s.>" .) }}
{{- end }}
{{- toYaml (dict "publish" $publish "subscribe" $subscribe) }}
{{- end -}}

{{/* Volume mounts of a service's containers: /tmp, the spool (CRM_SPOOL_DIR) and the NATS TLS files.
ctx: (dict "root" $ "s" <resolved service> "spool" true|false) */}}
{{- define "crm.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .spool }}
- name: spool
  mountPath: {{ .s.spool.mountPath }}
{{- end }}
{{- with .root.Values.nats.tls }}
{{- if and .enabled $.s.nats }}
{{- if .caSecret }}
- name: nats-tls-ca
  mountPath: /etc/crm/nats-tls/ca
  readOnly: true
{{- end }}
{{- if .clientCertSecret }}
- name: nats-tls-client
  mountPath: /etc/crm/nats-tls/client
  readOnly: true
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "crm.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .s.tmpSizeLimit }}
{{- if .spool }}
# Uploads, import files and exports (CRM_SPOOL_DIR), bounded apart from /tmp.
- name: spool
  emptyDir:
    sizeLimit: {{ .s.spool.sizeLimit }}
{{- end }}
{{- with .root.Values.nats.tls }}
{{- if and .enabled $.s.nats }}
{{- if .caSecret }}
- name: nats-tls-ca
  secret:
    secretName: {{ .caSecret }}
    items:
      - key: {{ .caKey }}
        path: {{ .caKey }}
{{- end }}
{{- if .clientCertSecret }}
- name: nats-tls-client
  secret:
    secretName: {{ .clientCertSecret }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The NATS server's authorization block: a user per enabled service with its permissions. */}}
{{- define "crm.natsAuthConf" -}}
{{- $root := . -}}
# Rendered by the CRM chart: one NATS user per service (crm_kit.events.permissions).
authorization {
  users: [
{{- range $name := keys .Values.services | sortAlpha }}
{{- $raw := index $root.Values.services $name }}
{{- if and $raw.enabled $raw.nats }}
{{- $events := mergeOverwrite (deepCopy $root.Values.defaults.events) (deepCopy ($raw.events | default dict)) }}
{{- $perms := include "crm.natsPermissions" (dict "root" $root "name" $name "events" $events) | fromYaml }}
    {
      user: {{ include "crm.natsUser" (dict "root" $root "name" $name) | quote }}
      password: $CRM_NATS_PASSWORD_{{ upper $name }}
      permissions: {
        {{- if $perms.publish }}
        publish: {allow: [{{ range $i, $x := $perms.publish }}{{ if $i }}, {{ end }}{{ $x | quote }}{{ end }}]}
        {{- else }}
        # Nothing to publish ("allow: []" would mean no limit).
        publish: {deny: [">"]}
        {{- end }}
        subscribe: {allow: [{{ range $i, $x := $perms.subscribe }}{{ if $i }}, {{ end }}{{ $x | quote }}{{ end }}]}
      }
    }
{{- end }}
{{- end }}
{{- with .Values.nats.auth.adminUser }}
    # The operators' user (nats-box, python -m crm_kit.events.dead_letters): every subject.
    {user: {{ . | quote }}, password: $CRM_NATS_PASSWORD_ADMIN}
{{- end }}
  ]
}
{{- end -}}
