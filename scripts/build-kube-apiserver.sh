#!/usr/bin/env bash
# Builds kube-apiserver from Debian 12's `kubernetes` source package (1.20.2), offline,
# once: the binary is cached in ${VNFHOST_CACHE:-/var/cache/vnfhost}/kube/ and this
# script prints its path. No registry ships kube-apiserver for Debian; the recipe and its
# pitfalls are in ../shared/PEERS.md (GOPATH mode, generated OpenAPI, reflect2 from
# Debian). A cold build takes 10-15 minutes of two cores.
set -euo pipefail
cache=${VNFHOST_CACHE:-/var/cache/vnfhost}/kube
out=$cache/kube-apiserver
if [ -x "$out" ]; then echo "$out"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "build-kube-apiserver.sh: run as root" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache.lock"
flock 9
if [ -x "$out" ]; then echo "$out"; exit 0; fi
log() { echo "build-kube-apiserver: $*" >&2; }

DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go golang-github-modern-go-reflect2-dev dpkg-dev >/dev/null
work=$cache/build
mkdir -p "$work/apt/parts" "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
# A private apt configuration with deb-src lines, so the system's apt state is untouched.
sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$work/apt/parts/src.sources"
apt=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$work/apt/parts"
     -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache")
if [ ! -d "$work/src/kube" ]; then
    log "fetching the kubernetes source package"
    apt-get "${apt[@]}" update -q >/dev/null
    (cd "$work/src" && apt-get "${apt[@]}" source --download-only kubernetes >/dev/null 2>&1)
    (cd "$work/src" && dpkg-source -x --no-check kubernetes_*.dsc kube.tmp >/dev/null && mv kube.tmp kube)
fi
tree=$work/src/kube
export GOPATH=$work/gopath GO111MODULE=off CGO_ENABLED=0 GOCACHE=$work/gocache GOFLAGS=
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$tree" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"
# The vendored reflect2 1.0.1 crashes under Go >= 1.18 on the first custom-resource write.
if [ ! -e vendor/github.com/modern-go/reflect2/go_above_118.go ]; then
    rm -rf vendor/github.com/modern-go/reflect2
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
    rm -f vendor/github.com/modern-go/reflect2/go.mod vendor/github.com/modern-go/reflect2/*_test.go
fi
gen=pkg/generated/openapi/zz_generated.openapi.go
if [ ! -s "$gen" ]; then
    log "generating the OpenAPI definitions"
    go build -o "$work/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    # vendor/k8s.io/* are symlinks into staging/: -R follows them.
    dirs=$(grep -rlR --include='*.go' '^// +k8s:openapi-gen=true' pkg vendor/k8s.io 2>/dev/null \
        | xargs -n1 dirname | sort -u \
        | grep -v -e kube-openapi -e /_examples/ -e sample-apiserver \
        | sed -e 's#^vendor/##' -e 's#^pkg/#k8s.io/kubernetes/pkg/#' | paste -sd, -)
    "$work/openapi-gen" --input-dirs "$dirs" \
        --output-base "$GOPATH/src" \
        --output-package k8s.io/kubernetes/pkg/generated/openapi \
        -O zz_generated.openapi \
        --go-header-file hack/boilerplate/boilerplate.generatego.txt \
        --report-filename /dev/null
fi
log "building kube-apiserver (10-15 minutes cold)"
v=k8s.io/component-base/version
go build -tags providerless -trimpath \
    -ldflags "-s -w -X $v.gitVersion=v1.20.2 -X $v.gitMajor=1 -X $v.gitMinor=20" \
    -o "$out.tmp" ./cmd/kube-apiserver
mv "$out.tmp" "$out"
echo "$out"
