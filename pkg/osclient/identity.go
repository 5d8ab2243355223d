package osclient

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
)

// Identity is who a Keystone token says its bearer is: what Neutron's policy is evaluated
// against.
type Identity struct {
	User, UserID       string
	Project, ProjectID string // empty for a token without a project scope
	Roles              []string
	// ApplicationCredential is true when the token was issued for an application credential
	// (its roles are the credential's).
	ApplicationCredential bool
	ExpiresAt             time.Time
}

// HasRole reports whether the token carries one of roles (Keystone lists implied roles too:
// admin implies member implies reader).
func (id *Identity) HasRole(roles ...string) bool {
	for _, r := range roles {
		if slices.Contains(id.Roles, r) {
			return true
		}
	}
	return false
}

// String says "user X (application credential) in project Y with roles [a b]".
func (id *Identity) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "user %s", id.User)
	if id.ApplicationCredential {
		b.WriteString(" (application credential)")
	}
	if id.Project != "" {
		fmt.Fprintf(&b, " in project %s", id.Project)
	} else {
		b.WriteString(" without a project scope")
	}
	fmt.Fprintf(&b, " with roles [%s]", strings.Join(id.Roles, " "))
	return b.String()
}

// identityOf reads a Keystone v3 token's body (tokens.CreateResult); nil for anything else.
func identityOf(r gophercloud.AuthResult) *Identity {
	body, ok := r.(interface{ ExtractInto(any) error })
	if !ok {
		return nil
	}
	var t struct {
		Methods []string `json:"methods"`
		User    struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"user"`
		Project struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"project"`
		Roles []struct {
			Name string `json:"name"`
		} `json:"roles"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if body.ExtractInto(&t) != nil {
		return nil
	}
	id := &Identity{User: t.User.Name, UserID: t.User.ID, Project: t.Project.Name, ProjectID: t.Project.ID,
		ApplicationCredential: slices.Contains(t.Methods, "application_credential"), ExpiresAt: t.ExpiresAt}
	for _, r := range t.Roles {
		id.Roles = append(id.Roles, r.Name)
	}
	slices.Sort(id.Roles)
	return id
}
