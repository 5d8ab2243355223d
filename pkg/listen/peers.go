package listen

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"strings"
)

// DefaultPeers are the users allowed on cmd/extproc's UNIX socket unless configured otherwise:
// root (Envoy in deploy/kubernetes and deploy/compose, and on a node during the migration from
// neutron-metadata-agent, deploy/systemd/metaproxy-envoy.service.d) and metaproxy-envoy, the user
// deploy/systemd runs Envoy as (deploy/systemd/metaproxy.sysusers.conf).
var DefaultPeers = []string{"root", "metaproxy-envoy"}

// Peer is one entry of an allow-list: a user or a group, by numeric id.
type Peer struct {
	Group bool
	ID    uint32
	// Name is how the entry was written (a name or a number), for logs.
	Name string
}

func (p Peer) String() string {
	kind := "user"
	if p.Group {
		kind = "group"
	}
	if p.Name == strconv.FormatUint(uint64(p.ID), 10) {
		return fmt.Sprintf("%s %d", kind, p.ID)
	}
	return fmt.Sprintf("%s %s (%d)", kind, p.Name, p.ID)
}

// Peers is an allow-list of users and groups. A connection's peer is allowed when its uid is one
// of the users or its gid one of the groups, as SO_PEERCRED reports them: the effective ids of the
// process that connected, at connect(2). Supplementary groups are not seen.
type Peers []Peer

// Allows reports whether a peer with uid and gid is on the list.
func (ps Peers) Allows(uid, gid uint32) bool {
	for _, p := range ps {
		if !p.Group && p.ID == uid || p.Group && p.ID == gid {
			return true
		}
	}
	return false
}

func (ps Peers) String() string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// ParsePeer checks the syntax of one allow-list entry: NAME or UID for a user, group:NAME or
// group:GID for a group (user:NAME is accepted too). It does not look names up.
func ParsePeer(entry string) (group bool, name string, err error) {
	kind, name, found := strings.Cut(entry, ":")
	if !found {
		kind, name = "user", entry
	}
	switch kind {
	case "user":
	case "group":
		group = true
	default:
		return false, "", fmt.Errorf("allowed peer %q: want NAME, UID, group:NAME or group:GID", entry)
	}
	if name == "" || strings.ContainsAny(name, " \t:,") {
		return false, "", fmt.Errorf("allowed peer %q: want NAME, UID, group:NAME or group:GID", entry)
	}
	return group, name, nil
}

// ResolvePeers turns entries into an allow-list, looking names up in the system's user and group
// databases (/etc/passwd, /etc/group). Every entry that does not parse or resolve is an error,
// all reported at once; with skipUnknown a name that is not on this host is left out instead and
// returned in skipped (the defaults name a user that exists only where deploy/systemd installed
// it). Numeric ids need no lookup.
func ResolvePeers(entries []string, skipUnknown bool) (ps Peers, skipped []string, err error) {
	var errs []error
	for _, e := range entries {
		group, name, perr := ParsePeer(e)
		if perr != nil {
			errs = append(errs, perr)
			continue
		}
		id, lerr := lookupID(group, name)
		var unknown user.UnknownUserError
		var unknownGroup user.UnknownGroupError
		switch {
		case lerr == nil:
			ps = append(ps, Peer{Group: group, ID: id, Name: name})
		case skipUnknown && (errors.As(lerr, &unknown) || errors.As(lerr, &unknownGroup)):
			skipped = append(skipped, e)
		default:
			errs = append(errs, fmt.Errorf("allowed peer %q: %w", e, lerr))
		}
	}
	if len(ps) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("allowed peers %q: none exists on this host, so no one could connect", entries))
	}
	return ps, skipped, errors.Join(errs...)
}

func lookupID(group bool, name string) (uint32, error) {
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		return uint32(n), nil
	}
	var idStr string
	if group {
		g, err := user.LookupGroup(name)
		if err != nil {
			return 0, err
		}
		idStr = g.Gid
	} else {
		u, err := user.Lookup(name)
		if err != nil {
			return 0, err
		}
		idStr = u.Uid
	}
	n, err := strconv.ParseUint(idStr, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("id %q of %s: %w", idStr, name, err)
	}
	return uint32(n), nil
}
