package ovnmeta

import (
	"path/filepath"
	"regexp"
)

// NamespacePrefix starts the name of every namespace this package manages (the agent's NS_PREFIX).
const NamespacePrefix = "ovnmeta-"

// MetadataCIDR is the metadata service's address as it is put on the namespace's interface.
const MetadataCIDR = "169.254.169.254/32"

var namespacePattern = regexp.MustCompile(`^ovnmeta-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$`)

// NamespaceName returns ovnmeta-<network id>.
func NamespaceName(networkID string) string { return NamespacePrefix + networkID }

// NamespacePath returns dir/ovnmeta-<network id>.
func NamespacePath(dir, networkID string) string { return filepath.Join(dir, NamespaceName(networkID)) }

// NetworkOf returns the network id of a namespace name this package owns (ovnmeta-<lower-case
// UUID>), or false for any other name.
func NetworkOf(namespace string) (string, bool) {
	m := namespacePattern.FindStringSubmatch(namespace)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// VethNames returns the veth pair of a network as the agent names it: tap<id[:10]>0 on the host
// (the OVS port) and tap<id[:10]>1 inside the namespace.
func VethNames(networkID string) (host, inner string) {
	p := networkID
	if len(p) > 10 {
		p = p[:10]
	}
	return "tap" + p + "0", "tap" + p + "1"
}
