//go:build e2e

package openstack

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DefaultDBCacheDir keeps freshly created, still empty databases (schema only) per installed
// package version, so that later starts copy them instead of paying neutron's and nova's schema
// creation (~10s of Python CPU each). Nothing host- or run-specific is in them: neutron-server and
// nova write their first rows only when they start.
const DefaultDBCacheDir = "/var/cache/metaproxy-e2e"

// dbSet is the databases one service needs, created by steps and cached under a key.
type dbSet struct {
	service string   // "neutron" or "nova": also the directory under BaseDir
	pkg     string   // the Debian package whose version (with the script) keys the cache
	files   []string // database file names in BaseDir/<service>
}

// cacheDir is where s's databases are cached, or "" when caching is off or the package version
// cannot be read.
func (c *Cloud) cacheDir(s dbSet, extra string) string {
	if c.opts.DBCacheDir == "-" {
		return ""
	}
	root := c.opts.DBCacheDir
	if root == "" {
		root = DefaultDBCacheDir
	}
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", s.pkg).Output()
	if err != nil || len(out) == 0 {
		return ""
	}
	h := sha256.Sum256([]byte(s.pkg + " " + string(out) + " " + extra))
	return filepath.Join(root, s.service+"-"+hex.EncodeToString(h[:8]))
}

// restoreDBs copies cached databases into BaseDir; false if there are none.
func (c *Cloud) restoreDBs(s dbSet, dir string) bool {
	if dir == "" {
		return false
	}
	for _, f := range s.files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	for _, f := range s.files {
		if err := copyFile(filepath.Join(dir, f), c.path(filepath.Join(s.service, f))); err != nil {
			c.opts.Logf("openstack: database cache %s unusable: %v", dir, err)
			return false
		}
	}
	c.opts.Logf("openstack: %s databases from cache %s", s.service, dir)
	return true
}

// saveDBs stores the just-created databases in the cache (atomically: a temporary directory
// renamed into place). Failures only cost speed next time, so they are logged, not returned.
func (c *Cloud) saveDBs(s dbSet, dir string) {
	if dir == "" {
		return
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		c.opts.Logf("openstack: database cache: %v", err)
		return
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".tmp-"+s.service+"-")
	if err != nil {
		c.opts.Logf("openstack: database cache: %v", err)
		return
	}
	defer os.RemoveAll(tmp)
	for _, f := range s.files {
		if err := copyFile(c.path(filepath.Join(s.service, f)), filepath.Join(tmp, f)); err != nil {
			c.opts.Logf("openstack: database cache: %v", err)
			return
		}
	}
	if err := os.Rename(tmp, dir); err != nil && !os.IsExist(err) && !strings.Contains(err.Error(), "not empty") {
		c.opts.Logf("openstack: database cache: %v", err)
	}
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return out.Close()
}
