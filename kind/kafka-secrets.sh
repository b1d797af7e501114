#!/usr/bin/env bash
# Makes Kafka's secrets in the cluster, once: what manifests/kafka mounts and no image or manifest holds.
#
#   Secret    kafka-tls                   (kubernetes.io/tls) the broker's key and certificate, and ca.crt
#   ConfigMap kafka-ca                    ca.crt alone: all a client needs to trust the broker
#   Secret    kafka-user-<principal>      (kubernetes.io/basic-auth) username, password: one per principal
#
# Everything is made here, offline, with openssl: a CA (its key lives in a temporary directory and is
# deleted when this script ends, so nobody can issue another certificate from it), the broker's
# certificate (SANs: the Service's names, the pod's, localhost), a random password per principal.
# An object that exists already is left as it is: running this again changes nothing. To rotate, see
# docs/operations.md, "Security".
#
# Environment: KUBECTL (the kubectl command, e.g. "kubectl --context kind-saga"), NAMESPACE (saga-system),
# PARTICIPANTS ("videos users agents"), DAYS (certificate validity, 365).
set -euo pipefail

KUBECTL=${KUBECTL:-kubectl}
NAMESPACE=${NAMESPACE:-saga-system}
PARTICIPANTS=${PARTICIPANTS:-videos users agents}
DAYS=${DAYS:-365}
kubectl=($KUBECTL -n "$NAMESPACE")
labels=(app.kubernetes.io/part-of=saga-operator app.kubernetes.io/name=kafka)

command -v openssl >/dev/null || { echo "kafka-secrets.sh: openssl is not installed" >&2; exit 1; }

exists() { "${kubectl[@]}" get "$1" "$2" -o name >/dev/null 2>&1; }

create() { # kind name, then the rest of the `kubectl create` command line; never overwrites
    local kind=$1 name=$2
    shift 2
    if exists "$kind" "$name"; then
        echo "$kind/$name exists; left as it is"
        return
    fi
    local what=("$kind")
    [ "$kind" = secret ] && what+=(generic)
    "${kubectl[@]}" create "${what[@]}" "$name" "$@" --dry-run=client -o yaml \
        | "${kubectl[@]}" label --local -f - "${labels[@]}" -o yaml \
        | "${kubectl[@]}" create -f -
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"
umask 077

if ! exists secret kafka-tls; then
    service=kafka.$NAMESPACE.svc
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$work/ca.key" -subj "/CN=saga-kafka-ca" -days "$DAYS" -sha256 \
        -addext basicConstraints=critical,CA:TRUE,pathlen:0 -addext keyUsage=critical,keyCertSign,cRLSign \
        -out "$work/ca.crt"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/tls.key" 2>/dev/null
    openssl req -new -key "$work/tls.key" -subj "/CN=$service" -out "$work/tls.csr"
    cat >"$work/ext.cnf" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:kafka, DNS:kafka.$NAMESPACE, DNS:$service, DNS:$service.cluster.local, DNS:*.$service, DNS:*.$service.cluster.local, DNS:localhost, IP:127.0.0.1
EOF
    openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
        -days "$DAYS" -sha256 -extfile "$work/ext.cnf" -out "$work/tls.crt" 2>/dev/null
    create secret kafka-tls --type=kubernetes.io/tls \
        --from-file=tls.crt="$work/tls.crt" --from-file=tls.key="$work/tls.key" --from-file=ca.crt="$work/ca.crt"
    # a new CA: the clients' copy must follow it
    "${kubectl[@]}" delete configmap kafka-ca --ignore-not-found >/dev/null
    create configmap kafka-ca --from-file=ca.crt="$work/ca.crt"
else
    echo "secret/kafka-tls exists; left as it is"
    if ! exists configmap kafka-ca; then
        "${kubectl[@]}" get secret kafka-tls -o jsonpath='{.data.ca\.crt}' | openssl base64 -d -A >"$work/ca.crt"
        create configmap kafka-ca --from-file=ca.crt="$work/ca.crt"
    fi
fi

for principal in saga-admin saga-broker saga-operator $(printf 'saga-participant-%s ' $PARTICIPANTS); do
    if exists secret "kafka-user-$principal"; then
        echo "secret/kafka-user-$principal exists; left as it is"
        continue
    fi
    # 32 random bytes, URL-safe base64: no character Kafka's SCRAM tools would need escaped
    password=$(openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n')
    printf '%s' "$password" >"$work/password"
    create secret "kafka-user-$principal" --type=kubernetes.io/basic-auth \
        --from-literal=username="$principal" --from-file=password="$work/password"
    rm -f "$work/password"
done
