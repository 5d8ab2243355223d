#!/bin/sh
# A lab CA for metaproxy's mutual TLS, with openssl (docs/operations.md, "Certificates"). For a lab
# or a first try; in production use your PKI (one Envoy certificate per network node all the same).
#
#   lab-ca.sh DIR NODE-ID [XDS-NAME] [EXTPROC-NAME]
#
# makes the CA in DIR (ca.crt, ca.key; an existing one is reused: run the script once per node
# with the same DIR) and NODE-ID's files in DIR/NODE-ID/, to copy to that node's
# /etc/metaproxy/tls/ (modes and owners: deploy/systemd/etc-metaproxy/tls/README.md):
#   ca.crt                  the CA, which verifies every certificate below (ca.key stays in DIR)
#   xds.crt, xds.key        cmd/xds's server certificate, SAN XDS-NAME (default 127.0.0.1)
#   envoy.crt, envoy.key    NODE-ID's Envoy client certificate, SAN DNS:NODE-ID: with cmd/xds's
#                           default --node-binding dns it may ask for NODE-ID's configuration only
#   extproc.crt, extproc.key  cmd/extproc's server certificate for a TCP --listen, SAN
#                           EXTPROC-NAME (default 127.0.0.1)
# A name that parses as an IP address becomes an IP SAN, anything else a DNS SAN.
set -eu
dir=${1:?usage: lab-ca.sh DIR NODE-ID [XDS-NAME] [EXTPROC-NAME]}
node=${2:?usage: lab-ca.sh DIR NODE-ID [XDS-NAME] [EXTPROC-NAME]}
xds=${3:-127.0.0.1}
extproc=${4:-127.0.0.1}
umask 077
mkdir -p "$dir"
cd "$dir"

if [ ! -f ca.key ]; then
	openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -days 825 \
		-subj "/CN=metaproxy lab CA" -keyout ca.key -out ca.crt \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

san() {
	case $1 in
	*[!0-9.]* | '') case $1 in *:*) echo "IP:$1" ;; *) echo "DNS:$1" ;; esac ;;
	*) echo "IP:$1" ;;
	esac
}

# issue NAME SAN USAGE: NODE-ID/NAME.key (P-256) and NODE-ID/NAME.crt, valid for 90 days.
issue() {
	printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' "$2" "$3" >"$node/$1.ext"
	openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=$node $1" -keyout "$node/$1.key" -out "$node/$1.csr"
	openssl x509 -req -sha256 -days 90 -in "$node/$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -extfile "$node/$1.ext" -out "$node/$1.crt"
	rm -f "$node/$1.csr" "$node/$1.ext"
}

mkdir -p "$node"
issue xds "$(san "$xds")" serverAuth
issue envoy "DNS:$node" clientAuth
issue extproc "$(san "$extproc")" serverAuth
cp ca.crt "$node/ca.crt"
chmod 0755 "$node"
chmod 0644 ca.crt "$node"/*.crt
chmod 0600 ca.key "$node"/*.key
echo "$dir/$node: ca.crt, xds.crt/key ($(san "$xds")), envoy.crt/key (DNS:$node), extproc.crt/key ($(san "$extproc"))"
