package contract

// MaxIDLen is the longest network or router id ValidID accepts.
const MaxIDLen = 64

// ValidID reports whether id is a Neutron network or router id as both sides take it: cmd/xds
// builds listeners (resource names, stat prefixes, qdhcp-/qrouter- namespace names) only for ids
// it accepts, and cmd/extproc answers 400 to a stream whose scope id it refuses. One rule for both,
// so that cmd/xds never publishes a listener every request of which is refused.
//
// The rule: 1 to MaxIDLen ASCII letters, digits, '-' or '_', the first a letter or digit. Neutron
// generates these ids itself (neutron-lib api/definitions/network.py and l3.py: 'id' has
// allow_post False and validate type:uuid), so they are UUIDs, which the rule accepts with or
// without dashes. It refuses what could change the meaning of a Neutron API query ('&', '=', '%'),
// of a path ('/', '.'), or of a log line (spaces, control characters).
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > MaxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case (c == '-' || c == '_') && i > 0:
		default:
			return false
		}
	}
	return true
}
